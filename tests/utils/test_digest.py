"""Weights digests: a file's SHA-256 prefix; a folder (cv ensemble) from all its weights files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from histoscan.utils.digest import file_digest


def test_file_and_folder_digests(tmp_path: Path) -> None:
    a = tmp_path / "cv" / "fold-0" / "checkpoints" / "best.ckpt"
    a.parent.mkdir(parents=True)
    a.write_bytes(b"weights-0")
    assert file_digest(a) == hashlib.sha256(b"weights-0").hexdigest()[:12]
    (tmp_path / "cv" / "notes.txt").write_text("not weights")
    before = file_digest(tmp_path / "cv")
    (tmp_path / "cv" / "notes.txt").write_text("changed")
    assert file_digest(tmp_path / "cv") == before  # only weights files count
    b = tmp_path / "cv" / "fold-1" / "checkpoints" / "best.ckpt"
    b.parent.mkdir(parents=True)
    b.write_bytes(b"weights-1")
    assert file_digest(tmp_path / "cv") != before
