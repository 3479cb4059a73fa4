"""Small PatchCamelyon files in the official layout (names, HDF5 keys, shapes, dtypes, meta CSV) for tests."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

PREFIX = "camelyonpatch_level_2_split"
SPLITS = ("train", "valid", "test")


@dataclass
class PCamFixture:
    """What `write_pcam` wrote: the folder, file paths by name, and the arrays per split."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)  # file name -> path
    x: dict[str, np.ndarray] = field(default_factory=dict)  # split -> N x S x S x 3 uint8
    y: dict[str, np.ndarray] = field(default_factory=dict)  # split -> N uint8 (0/1)
    wsi: dict[str, list[str]] = field(default_factory=dict)  # split -> slide name per patch


def pcam_images(labels: np.ndarray, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Pink "tissue" noise; tumour patches (label 1) get a dark purple blob in the centre 32 x 32 (as PCam's
    label rule), so a tiny model can learn the classes."""
    n = len(labels)
    base = np.array([232, 190, 210], np.float32)
    x = base + rng.normal(0, 18, (n, size, size, 3)).astype(np.float32)
    c0, c1 = size // 2 - 16, size // 2 + 16
    blob = np.array([95, 45, 135], np.float32) + rng.normal(0, 12, (n, 32, 32, 3)).astype(np.float32)
    pos = np.asarray(labels) == 1
    x[pos, c0:c1, c0:c1] = blob[pos]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_pcam(
    root: str | Path,
    n_per_split: dict[str, int] | None = None,
    with_meta: bool = True,
    gz: bool = False,
    seed: int = 0,
    size: int = 96,
) -> PCamFixture:
    """Write PCam split files into `root`.

    Each split gets camelyonpatch_level_2_split_<split>_x.h5 (dataset `x`, N x size x size x 3 uint8) and
    _y.h5 (dataset `y`, N x 1 x 1 x 1 uint8), plus, with `with_meta`, _meta.csv with an unnamed index column
    and coord_y, coord_x, tumor_patch, center_tumor_patch (True/False), wsi, as pandas writes it. Labels
    alternate 0/1 (half each); slides are never shared between splits.

    Args:
        root: folder (created).
        n_per_split: patches per split, e.g. {"train": 8, "valid": 4}; splits left out are not written.
            Default {"train": 8, "valid": 4, "test": 4}.
        with_meta: also write the _meta.csv files.
        gz: write the .h5 files gzip-compressed as downloaded (<name>.h5.gz) instead of plain .h5.
        seed: random seed of the pixels and coordinates.
        size: patch side (96 in the real data).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_per_split = {"train": 8, "valid": 4, "test": 4} if n_per_split is None else n_per_split
    rng = np.random.default_rng(seed)
    fx = PCamFixture(root)
    for split, n in n_per_split.items():
        if split not in SPLITS:
            raise ValueError(f"unknown PCam split {split!r}")
        y = (np.arange(n) % 2).astype(np.uint8)
        x = pcam_images(y, rng, size)
        # two slides per split (one normal, one with tumour), named as in the PCam meta files
        kind = "test" if split == "test" else "train"
        offset = {"train": 1, "valid": 101, "test": 201}[split]
        wsi = [f"camelyon16_{kind}_{'tumor' if lab else 'normal'}_{offset + lab:03d}" for lab in y]
        fx.x[split], fx.y[split], fx.wsi[split] = x, y, wsi
        for key, arr in (("x", x), ("y", y.reshape(n, 1, 1, 1))):
            path = root / f"{PREFIX}_{split}_{key}.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset(key, data=arr, dtype=np.uint8)
            if gz:
                with open(path, "rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                path.unlink()
                path = path.with_name(path.name + ".gz")
            fx.files[path.name] = path
        if with_meta:
            path = root / f"{PREFIX}_{split}_meta.csv"
            lines = [",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"]
            for i in range(n):
                cy, cx = rng.integers(0, 100_000, 2)
                lines.append(f"{i},{cy},{cx},{bool(y[i])},{bool(y[i])},{wsi[i]}")
            path.write_text("\n".join(lines) + "\n")
            fx.files[path.name] = path
    return fx
