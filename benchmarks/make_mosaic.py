"""Truth mosaics from labelled hcd-train patches: pyramidal JPEG TIFF slides with their tumour truth.

    python benchmarks/make_mosaic.py OUT --split-from runs/compare-hcd/pytorch-seed/fold-0 --n 3 --size 24

Each mosaic is a grid of 96 px cells (one patch each) at 0.972 µm/px (PCam's), a 2-cell glass margin, an
irregular tissue section of normal patches with blob-like tumour regions of tumour patches and a few glass
holes (`truth_mosaic.py`). With `--split-from RUN` only the patches RUN/split.csv marks "test" are
used (ids that model never saw); a patch is reused only when a mosaic needs more than the pool holds.
Writes OUT/mosaic-<k>.tif plus .truth.npy (0 glass, 1 normal, 2 tumour per cell), .truth.json, .truth.geojson
and mosaic-<k>.xml (the outlines as ASAP XML, for `histoscan tiles --annotations OUT` and `slides --truth OUT`).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import shared_data
from truth_mosaic import mosaic_layout, paint_mosaic, save_mosaic

from histoscan.folders import RunDir


def hcd_labels(data: Path) -> dict[str, int]:
    """id -> label of an hcd-train folder (train_labels.csv)."""
    with (data / "train_labels.csv").open(newline="") as f:
        return {r["id"]: int(r["label"]) for r in csv.DictReader(f)}


def test_ids(run: Path) -> list[str]:
    """Ids RUN/split.csv marks "test" (held out from that model's training and threshold choice)."""
    return [i for i, part in RunDir(run).read_split().items() if part == "test"]


def load_pools(data: Path, ids: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(normal patches, tumour patches, their ids) of `ids` (default: all of hcd-train), uint8 N x 96 x 96 x 3."""
    labels = hcd_labels(data)
    ids = sorted(labels) if ids is None else sorted(ids)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise SystemExit(f"{len(missing)} split ids are not in {data}/train_labels.csv (e.g. {missing[0]})")
    n_ids = [i for i in ids if labels[i] == 0]
    t_ids = [i for i in ids if labels[i] == 1]

    def read(which: list[str]) -> np.ndarray:
        return np.stack([tifffile.imread(data / "train" / f"{i}.tif") for i in which])

    return read(n_ids), read(t_ids), n_ids, t_ids


def make_mosaics(
    out: Path, normal: np.ndarray, tumour: np.ndarray, n: int, size: int, seed: int = 0, offset: int = 0
) -> list[Path]:
    """Write `n` mosaics of size x size tissue cells (seeds seed..seed+n-1) into `out`; return the slides."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(seed, seed + n):
        m = paint_mosaic(mosaic_layout(size, seed=k), normal, tumour, seed=1000 + k, offset=offset)
        path = out / f"mosaic-{k}.tif"
        meta = save_mosaic(m, path)
        print(
            f"{path}: {m.image.shape[1]}x{m.image.shape[0]} px, {meta['n_tissue_cells']} tissue cells, "
            f"{meta['n_tumour_cells']} tumour in {meta['n_tumour_regions']} regions",
            flush=True,
        )
        paths.append(path)
    return paths


def main() -> None:
    """Build the mosaics."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--data", type=Path, default=shared_data() / "hcd-train", help="hcd-train folder")
    ap.add_argument("--split-from", type=Path, default=None, help="use only RUN/split.csv's test patches")
    ap.add_argument("--n", type=int, default=3, help="mosaics")
    ap.add_argument("--size", type=int, default=24, help="tissue square side in cells")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--offset", type=int, default=0, help="glass px before the cell grid (grid off the tiles)"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    ids = test_ids(args.split_from) if args.split_from else None
    normal, tumour, n_ids, t_ids = load_pools(args.data, ids)
    source = f"the test split of {args.split_from}" if ids else "all of hcd-train"
    print(f"patches: {len(n_ids)} normal, {len(t_ids)} tumour ({source})")
    make_mosaics(args.out, normal, tumour, args.n, args.size, args.seed, args.offset)
    (args.out / "patches.json").write_text(json.dumps({"normal": n_ids, "tumour": t_ids}))
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
