"""Short content digests of model weights (a served model's version, a cohort's model id)."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".ckpt", ".onnx", ".pt", ".pth")


def file_digest(path: str | Path, n: int = 12) -> str:
    """First `n` hex digits of the SHA-256 of a weights file, read 1 MiB at a time.

    A folder (a `histoscan cv` ensemble) digests every weights file under it, with its relative path, in sorted
    order: any changed, added or removed member changes the digest.

    Args:
        path: the file or folder.
        n: how many hex digits to keep.
    """
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in WEIGHT_SUFFIXES):
            h.update(str(f.relative_to(p)).encode() + b"\0" + file_digest(f, 64).encode())
        return h.hexdigest()[:n]
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]
