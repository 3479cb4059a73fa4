"""The one output guard and atomic writes: nothing existing is overwritten without --force, and a file or
folder appears only complete (written beside its destination, then renamed into place)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from histoscan.errors import HistoscanInputError


def guard_output(
    path: str | Path, force: bool, kind: Literal["file", "folder"] = "folder", option: str = "--out"
) -> Path:
    """Check that `path` may be written: refuse to overwrite existing output unless `force`.

    A folder may be written when it is absent or empty, or with `force`; a file when it is absent, or with
    `force`. A file where a folder is wanted (or the reverse) is always an error.

    Args:
        path: the output file or folder.
        force: the user's --force.
        kind: "file" or "folder".
        option: the option's name for the message.

    Returns:
        `path` as a Path.
    """
    p = Path(path).expanduser()
    if kind == "folder":
        if p.exists() and not p.is_dir():
            raise HistoscanInputError(f"{option} {p}: exists and is not a folder")
        if p.is_dir() and any(p.iterdir()) and not force:
            raise HistoscanInputError(
                f"{option} {p}: folder exists and is not empty (use --force to overwrite)"
            )
    else:
        if p.is_dir():
            raise HistoscanInputError(f"{option} {p}: is a folder; give a file name such as {p / 'out.csv'}")
        if p.exists() and not force:
            raise HistoscanInputError(f"{option} {p}: file exists (use --force to overwrite)")
    return p


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block succeeds, else removed.

    The file gets the mode a plain open() would give (0o666 less the umask), not mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _umask_mode() & 0o666)
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _umask_mode() & 0o666)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _umask_mode() -> int:
    """0o777 less the process umask: the mode a plain mkdir would give (mkdtemp makes 0o700 folders)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def make_staging_dir(dest: Path, suffix: str = ".partial") -> Path:
    """A hidden sibling folder of `dest` to build it in, with ordinary (umask) permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent))
    os.chmod(tmp, _umask_mode())
    return tmp


def replace_folder(tmp: Path, dest: Path) -> None:
    """Move the finished folder `tmp` onto `dest`; an old `dest` is moved aside first, put back if the move
    fails, and deleted only afterwards (an empty `dest` is simply removed)."""
    old = None
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    elif dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(dest: str | Path, force: bool, option: str = "--out") -> Iterator[Path]:
    """Build an output folder in a hidden sibling and move it onto `dest` when the block succeeds.

    The guard runs first (a non-empty `dest` needs `force`); on error or Ctrl-C the partial folder is removed
    and `dest` is left as it was.
    """
    dest = guard_output(dest, force, "folder", option)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_staging_dir(dest)
    try:
        yield tmp
        replace_folder(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
