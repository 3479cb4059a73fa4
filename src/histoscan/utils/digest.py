"""Short content digests of files (a served model's version, a cohort's model id)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: str | Path, n: int = 12) -> str:
    """First `n` hex digits of the file's SHA-256, read 1 MiB at a time.

    Args:
        path: the file.
        n: how many hex digits to keep.
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]
