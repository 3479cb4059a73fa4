"""Preparing stores: every patch decoded once into a packed uint8 .npy (memory-mapped), index.csv, meta.json.

`prepare` writes a store where asked; `resolve_store` opens a STORE as is or prepares a raw source into the
cache. The store format itself (PatchStore, is_store, require_labelled) lives in patchstore.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histoscan import __version__
from histoscan.data.base import Part, Source, fingerprint
from histoscan.data.detect import detect_source
from histoscan.data.images import Fit
from histoscan.data.patchstore import (
    FITTED_COLUMNS,
    INDEX_COLUMNS,
    SKIPPED_COLUMNS,
    STORE_VERSION,
    PatchStore,
    is_store,
    require_labelled,
)
from histoscan.errors import HistoscanInputError
from histoscan.folders import RunDir, StoreDir
from histoscan.utils.fs import atomic_path, guard_output, replace_folder
from histoscan.utils.paths import cache_dir as default_cache_dir

__all__ = ["PatchStore", "is_store", "pack_source", "prepare", "require_labelled", "resolve_store", "write_skipped"]

log = logging.getLogger(__name__)

MAX_SKIPPED_LISTED = 10_000  # meta.json lists at most this many skipped files (skipped.csv lists them all)


def _check_options(image_size: int | None, fit: str) -> None:
    if fit not in ("pad", "resize"):
        raise HistoscanInputError(f"--fit: unknown value {fit!r} (use pad or resize)")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise HistoscanInputError(f"--image-size: {image_size} is outside 8..4096")


def _target_size(src: Source, image_size: int | None) -> int:
    """The requested size, else the format's native size, else the most common size in the data."""
    if image_size is not None:
        return image_size
    if src.native_size:
        return src.native_size
    sizes = src.sizes()
    if not sizes:
        raise HistoscanInputError(f"{src.path}: no readable images")
    h, w = sizes.most_common(1)[0][0]
    return max(h, w)


def _checksum(src: Source, image_size: int | None, fit: str, skip_bad: bool) -> str:
    params = {
        "kind": src.kind,
        "part": src.part,
        "image_size": image_size,
        "fit": fit,
        "skip_bad": skip_bad,
        "store_version": STORE_VERSION,
    }
    return fingerprint(src.inputs(), json.dumps(params, sort_keys=True))


def _check_out(out: Path, force: bool) -> None:
    """A store may replace only a store (with `force`): other data in `out` is never overwritten."""
    if out.is_dir() and any(out.iterdir()) and not StoreDir(out).meta.is_file():
        raise HistoscanInputError(f"{out}: exists and is not a histoscan store; refusing to overwrite it")
    guard_output(out, force, "folder", "--out")


def _shrink_npy(path: Path, n: int) -> None:
    """Cut a .npy to its first n rows in place: rewrite the shape in the header (same length) and truncate.

    Hand-rolled: numpy has no in-place resize, and copying gigabytes to drop a few skipped rows is waste.
    """
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, fortran, dtype = read[version](f)
        offset = f.tell()
        len_bytes = 2 if version == (1, 0) else 4
        header_len = offset - 6 - 2 - len_bytes
        new = repr(
            {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (n, *shape[1:])}
        ).encode("latin1")
        f.seek(6 + 2 + len_bytes)
        f.write(new + b" " * (header_len - len(new) - 1) + b"\n")
        f.truncate(offset + n * int(np.prod(shape[1:])) * dtype.itemsize)


def pack_source(
    src: Source, out: Path, size: int, checksum: str, force: bool = False, extra: dict[str, str] | None = None
) -> PatchStore:
    """Pack a Source whose patches are already `size` px (e.g. tiles cut from slides) into the store `out`;
    `extra` files (name -> text) are written into the store beside its own."""
    _check_out(out, force)
    return _pack(src, out, size, "pad", False, checksum, extra)


def _pack(
    src: Source, out: Path, size: int, fit: Fit, skip_bad: bool, checksum: str, extra: dict[str, str] | None = None
) -> PatchStore:
    """Decode `src` into a temporary folder beside `out`, then move it into place."""
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    folder = StoreDir(tmp)
    try:
        n_max = len(src)
        mm = np.lib.format.open_memmap(folder.images, mode="w+", dtype=np.uint8, shape=(n_max, size, size, 3))
        offset, row_bytes = mm.offset, size * size * 3
        del mm  # rows are written through a plain file handle so no mapped pages accumulate in RSS
        n, labels, groups, splits = 0, Counter(), set(), Counter()
        notes: Counter[str] = Counter()
        skipped: list[dict[str, str]] = []
        n_skipped = n_fitted = 0
        with (
            open(folder.images, "r+b") as fimg,
            open(folder.index, "w", newline="") as fidx,
            open(folder.fitted, "w", newline="") as ffit,
            open(folder.skipped, "w", newline="") as fskip,
            tqdm(
                total=n_max, unit="img", desc="prepare", file=sys.stderr, mininterval=0.5, disable=None
            ) as bar,
        ):
            index, fits, skips = csv.writer(fidx), csv.writer(ffit), csv.writer(fskip)
            index.writerow(INDEX_COLUMNS)
            fits.writerow(FITTED_COLUMNS)
            skips.writerow(SKIPPED_COLUMNS)
            for b in src.batches(size, fit, skip_bad):
                if b.ids:
                    fimg.seek(offset + n * row_bytes)
                    fimg.write(memoryview(np.ascontiguousarray(b.images, dtype=np.uint8)).cast("B"))
                index.writerows(zip(b.ids, b.labels, b.groups, b.sources, b.splits, strict=True))
                done = [(n + k, b.ids[k], f) for k, f in enumerate(b.fitted) if f]
                fits.writerows(done)
                skips.writerows((k["source"], k["reason"]) for k in b.skipped)
                n_fitted += len(done)
                n += len(b.ids)
                labels.update(b.labels)
                groups.update(b.groups)
                splits.update(b.splits)
                notes.update(b.notes)
                n_skipped += len(b.skipped)
                skipped.extend(b.skipped[: max(0, MAX_SKIPPED_LISTED - len(skipped))])
                bar.update(len(b.ids) + len(b.skipped))
        if n == 0:
            raise HistoscanInputError(f"{src.path}: no readable images ({n_skipped} skipped)")
        if n < n_max:
            _shrink_npy(folder.images, n)
        groups.discard("")
        splits.pop("", None)
        meta = {
            "format": src.kind,
            "store_version": STORE_VERSION,
            "source": str(Path(src.path).resolve()),
            "part": src.part,
            "size": size,
            "fit": fit,
            "mpp": src.mpp,
            "n": n,
            "counts": {str(k) if k >= 0 else "unlabelled": v for k, v in sorted(labels.items())},
            "n_groups": len(groups),
            "splits": dict(splits),
            "checksum": checksum,
            "n_skipped": n_skipped,
            "skipped": skipped,
            "n_fitted": n_fitted,
            "notes": dict(notes),
            "histoscan_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 2),
        }
        folder.write_meta(meta)
        for name, text in (extra or {}).items():  # files the source adds (e.g. tiles' manifest.csv)
            (tmp / name).write_text(text)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PatchStore.open(out)


def prepare(
    data: str | Path,
    out: str | Path,
    image_size: int | None = None,
    fit: Fit = "pad",
    skip_bad: bool = False,
    force: bool = False,
    part: Part = "auto",
) -> PatchStore:
    """Decode any supported source once into a packed store.

    Args:
        data: a source (see `detect_source`) or a store (re-packed, e.g. at another size).
        out: the store folder to write (STORE/images.npy, index.csv, meta.json).
        image_size: patch side; None: 96 for PCam/HCD, else the most common size in the data.
        fit: "pad" (reflect-pad smaller, centre-crop larger) or "resize" (bilinear) for other sizes.
        skip_bad: skip unreadable or absent images (counted in meta.json) instead of failing.
        force: overwrite an existing store at `out`.
        part: "labelled" / "unlabelled" / "auto" (see `detect_source`).

    Returns:
        The new store, opened.

    Raises:
        HistoscanInputError: bad input (naming the file or option), or `out` exists without `force`.
    """
    _check_options(image_size, fit)
    out = Path(out).expanduser()
    _check_out(out, force)
    src = detect_source(data, part)
    if src.kind == "store" and Path(src.path).resolve() == out.resolve():
        raise HistoscanInputError(f"{out}: cannot prepare a store into itself")
    size = _target_size(src, image_size)
    return _pack(src, out, size, fit, skip_bad, _checksum(src, image_size, fit, skip_bad))


def resolve_store(
    data: str | Path,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    fit: Fit = "pad",
    skip_bad: bool = False,
    part: Part = "auto",
) -> PatchStore:
    """A store for `data`: a STORE is opened as is; a raw source is prepared into the cache and reused.

    The cache folder is `cache_dir` (default $HISTOSCAN_CACHE/stores, else ~/.cache/histoscan/stores) /
    sha256(source path + params)[:16]; it is rebuilt when the inputs checksum (paths, sizes, mtimes + params)
    no longer matches its meta.json. A STORE asked for at another `image_size` is re-packed into the cache.
    """
    _check_options(image_size, fit)
    p = Path(data).expanduser()
    if is_store(p):
        store = PatchStore.open(p)
        if image_size is None or image_size == store.size:
            if part == "labelled":
                require_labelled(store, both_classes=False)
            return store
    src = detect_source(p, part)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "stores"
    params = json.dumps([str(p.resolve()), src.part, image_size, fit, skip_bad])
    target = root / hashlib.sha256(params.encode()).hexdigest()[:16]
    checksum = _checksum(src, image_size, fit, skip_bad)
    if is_store(target):
        try:
            cached = PatchStore.open(target)
            # a cache entry from before fitted.csv that fitted images is rebuilt so their fits can be reported
            if cached.meta.get("checksum") == checksum and cached.fitted is not None:
                log.info("using cached store %s for %s", target, p)
                return cached
        except HistoscanInputError:
            pass  # damaged cache entry: rebuilt below
        log.info("inputs of %s changed: rebuilding cached store %s", p, target)
    else:
        log.info("preparing %s into cached store %s", p, target)
    return _pack(src, target, _target_size(src, image_size), fit, skip_bad, checksum)


def write_skipped(store: PatchStore, folder: str | Path, shown: str | Path | None = None) -> str | None:
    """Write FOLDER/skipped.csv (path,reason) listing the files the store skipped as unreadable (--skip-bad).

    Args:
        store: the store the command used.
        folder: where skipped.csv goes (e.g. a run folder being staged).
        shown: the folder to name in the returned line (default `folder`), e.g. where a staged run will be.

    Returns:
        The line to print ("skipped N unreadable image(s) ...: listed in .../skipped.csv"), or None when no file
        was skipped (then nothing is written).
    """
    n = int(store.meta.get("n_skipped") or 0)
    if not n:
        return None
    rows = store.skipped_files()
    path = RunDir(folder).skipped_path
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SKIPPED_COLUMNS)
        w.writerows((r["path"], r["reason"]) for r in rows)
    listed = "" if len(rows) == n else f" (the first {len(rows)}; the store predates full lists)"
    first = f", e.g. {rows[0]['reason']}" if rows else ""
    where = RunDir(shown if shown is not None else folder).skipped_path
    return f"skipped {n} unreadable image(s) (--skip-bad){first}; listed in {where}{listed}"
