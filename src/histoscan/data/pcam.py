"""PatchCamelyon HDF5 reader: official split files (x, y, meta CSV) or any HDF5 with an N x H x W x 3 `x`."""

from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoscan.data.base import PCAM_MPP, Batch, Part, Source
from histoscan.data.images import Fit, fit_image, fit_kind, fit_note
from histoscan.errors import HistoscanInputError

_PCAM_X = re.compile(r"^camelyonpatch_level_2_split_(train|valid|test)_x\.h5$")
_PCAM_SPLIT = {"train": "train", "valid": "val", "test": "test"}


@dataclass
class _H5Part:
    """One images file (dataset `x`) with its labels (`y`, N x 1 x 1 x 1) and optional meta CSV (wsi)."""

    x: Path
    split: str
    prefix: str
    n: int
    shape: tuple[int, ...]
    y: Path | None = None
    meta: Path | None = None
    labels: np.ndarray | None = None
    groups: list[str] | None = None


def _h5_dataset(path: Path, key: str):
    import h5py  # lazy: only HDF5 inputs pay for it

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise HistoscanInputError(f"{path}: not a readable HDF5 file ({e})") from None
    if key not in f:
        keys = ", ".join(f.keys()) or "nothing"
        f.close()
        raise HistoscanInputError(f"{path}: no dataset '{key}' (has: {keys})")
    return f, f[key]


def _pcam_part(x: Path, split: str) -> _H5Part:
    f, ds = _h5_dataset(x, "x")
    with f:
        shape, dtype = tuple(ds.shape), ds.dtype
        if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
            raise HistoscanInputError(f"{x}: dataset 'x' is {shape} {dtype}; expected N x H x W x 3 uint8")
        has_y = "y" in f
    if shape[0] == 0:
        raise HistoscanInputError(f"{x}: dataset 'x' holds no images")
    stem = x.name[: -len("_x.h5")] if x.name.endswith("_x.h5") else None
    prefix = _PCAM_SPLIT.get(split, split) or (stem or x.stem)
    part = _H5Part(x, _PCAM_SPLIT.get(split, ""), prefix, shape[0], shape)
    y = x.with_name(f"{stem}_y.h5") if stem else None
    if (y is not None and y.is_file()) or has_y:
        part.y = y if y is not None and y.is_file() else x
        f, ds = _h5_dataset(part.y, "y")
        with f:
            labels = np.asarray(ds[:]).reshape(len(ds), -1)[:, 0] if len(ds) else np.zeros(0, np.uint8)
        if len(labels) != part.n:
            raise HistoscanInputError(f"{part.y}: {len(labels)} labels for {part.n} images in {x.name}")
        bad = np.setdiff1d(np.unique(labels), [0, 1])
        if bad.size:
            raise HistoscanInputError(f"{part.y}: label {bad[0]} is not 0 or 1")
        part.labels = labels.astype(np.int8)
    meta = x.with_name(f"{stem}_meta.csv") if stem else None
    if meta is not None and meta.is_file():
        wsi = _csv_column(meta, "wsi")
        if len(wsi) != part.n:
            raise HistoscanInputError(f"{meta}: {len(wsi)} rows for {part.n} images in {x.name}")
        part.meta, part.groups = meta, wsi
    return part


def _csv_column(path: Path, column: str) -> list[str]:
    """One column of a CSV, streamed (PCam meta files have 262,144 rows; no per-row dicts kept)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if column not in header:
                raise HistoscanInputError(
                    f"{path}: missing column '{column}' (has: {', '.join(header) or 'nothing'})"
                )
            i = header.index(column)
            return [sys.intern(row[i].strip()) for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error, IndexError) as e:
        raise HistoscanInputError(f"{path}: cannot read CSV ({e!r})") from None


class PCamSource(Source):
    """PatchCamelyon HDF5: images `x` (N x 96 x 96 x 3 uint8), labels `y`, slide (`wsi`) from the meta CSV."""

    kind = "pcam"
    mpp = PCAM_MPP

    def __init__(self, path: Path, parts: list[_H5Part], part: Part):
        labelled = [p for p in parts if p.labels is not None]
        unlabelled = [p for p in parts if p.labels is None]
        if part == "labelled" and not labelled:
            raise HistoscanInputError(
                f"{path}: has no labels (no _y.h5 beside the _x.h5; part 'labelled' asked for)"
            )
        if part in ("labelled", "auto"):
            chosen = labelled or parts
        else:
            chosen = unlabelled or parts
        self.path, self.parts = path, chosen
        self.part = "labelled" if all(p.labels is not None for p in chosen) else "unlabelled"
        sides = {p.shape[1:3] for p in chosen}
        (h, w), *others = sides
        self.native_size = h if not others and h == w else None  # None: the store picks the most common size

    @classmethod
    def from_file(cls, x: Path, part: Part) -> PCamSource:
        """One HDF5 file with dataset `x`; labels from the sibling _y.h5 or a dataset `y` in the file."""
        m = _PCAM_X.match(x.name)
        if x.name.endswith("_y.h5") and x.with_name(x.name[:-5] + "_x.h5").is_file():
            x = x.with_name(x.name[:-5] + "_x.h5")
            m = _PCAM_X.match(x.name)
        return cls(x, [_pcam_part(x, m.group(1) if m else "")], part)

    @classmethod
    def from_folder(cls, root: Path, part: Part) -> PCamSource | None:
        """A folder with any subset of the official train/valid/test files, or None when it has none."""
        xs = sorted(
            (f for f in root.iterdir() if _PCAM_X.match(f.name)),
            key=lambda f: list(_PCAM_SPLIT).index(_PCAM_X.match(f.name).group(1)),
        )
        if not xs:
            if any(f.name.startswith("camelyonpatch_") and f.name.endswith(".h5.gz") for f in root.iterdir()):
                raise HistoscanInputError(
                    f"{root}: PCam files are gzip-compressed; gunzip them or use histoscan download"
                )
            return None
        return cls(root, [_pcam_part(x, _PCAM_X.match(x.name).group(1)) for x in xs], part)

    def __len__(self) -> int:
        return sum(p.n for p in self.parts)

    @property
    def labelled(self) -> bool:
        return all(p.labels is not None for p in self.parts)

    def inputs(self) -> list[Path]:
        return [f for p in self.parts for f in dict.fromkeys([p.x, p.y, p.meta]) if f is not None]

    def sizes(self) -> Counter[tuple[int, int]]:
        return Counter({p.shape[1:3]: p.n for p in self.parts})

    def batches(self, size: int, fit: Fit, skip_bad: bool, batch_size: int = 4096) -> Iterator[Batch]:
        for p in self.parts:
            f, ds = _h5_dataset(p.x, "x")
            with f:
                # one reused chunk buffer: memory stays at one chunk however large the file is
                buf = np.empty((min(batch_size, p.n), *p.shape[1:]), np.uint8)
                for start in range(0, p.n, batch_size):
                    stop = min(start + batch_size, p.n)
                    try:
                        ds.read_direct(buf, np.s_[start:stop], np.s_[: stop - start])
                        x = buf[: stop - start]
                    except OSError as e:
                        raise HistoscanInputError(f"{p.x}: rows {start}-{stop} unreadable ({e})") from None
                    notes: Counter[str] = Counter()
                    fitted: list[str] = []
                    if x.shape[1:3] != (size, size):
                        h, w = x.shape[1:3]
                        notes[fit_kind(h, w, size, fit) or ""] += len(x)
                        fitted = [fit_note(h, w, size, fit) or ""] * len(x)
                        x = np.stack([fit_image(im, size, fit) for im in x])
                    rows = range(start, stop)
                    yield Batch(
                        x,
                        [f"{p.prefix}_{r:06d}" for r in rows],
                        p.labels[start:stop].tolist() if p.labels is not None else [-1] * len(x),
                        p.groups[start:stop] if p.groups is not None else [""] * len(x),
                        [f"{p.x.name}:{r}" for r in rows],
                        [p.split] * len(x),
                        notes,
                        fitted=fitted,
                    )
