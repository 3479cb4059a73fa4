"""Benchmark `prepare` on a large PCam-layout HDF5: wall time, throughput and peak RSS (bounded memory).

Usage: python benchmarks/bench_prepare.py [--n 262144] [--tmp /tmp] [--json]
(--n 262144 is the full PCam train split, 7.2 GB packed; --n 65536 = 1.8 GB is a quick run.)
The data is generated chunk by chunk (never whole in memory) into a temporary folder, deleted afterwards.
`histoscan.data.store.prepare` runs in a fresh child process, so its peak RSS is measured alone; the child
reports its RSS after imports (baseline) and its peak, so the growth due to the data is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from histoscan.folders import StoreDir

PREFIX = "camelyonpatch_level_2_split_train"
CHUNK = 4096
# Peak RSS from VmHWM: ru_maxrss would carry over the parent's peak across fork+exec on Linux.
CHILD = """
import json, re, sys, time
from pathlib import Path
from histoscan.data.store import prepare
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) // 1024
base = hwm()
t0 = time.perf_counter()
store = prepare(sys.argv[1], sys.argv[2])
wall = time.perf_counter() - t0
print(json.dumps({"prepare_s": wall, "baseline_rss_mb": base, "peak_rss_mb": hwm(), "n": len(store)}))
"""


def generate(root: Path, n: int, seed: int = 0) -> None:
    """Write PCam-layout train _x.h5 / _y.h5 / _meta.csv with n patches, CHUNK rows at a time."""
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, (CHUNK, 96, 96, 3), dtype=np.uint8)  # varied per chunk below, cheaply
    with h5py.File(root / f"{PREFIX}_x.h5", "w") as fx, h5py.File(root / f"{PREFIX}_y.h5", "w") as fy:
        x = fx.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8)
        y = fy.create_dataset("y", shape=(n, 1, 1, 1), dtype=np.uint8)
        for start in range(0, n, CHUNK):
            k = min(CHUNK, n - start)
            x[start : start + k] = block[:k] + np.uint8(start // CHUNK % 256)
            y[start : start + k] = rng.integers(0, 2, (k, 1, 1, 1), dtype=np.uint8)
    with open(root / f"{PREFIX}_meta.csv", "w") as f:
        f.write(",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n")
        for i in range(n):
            f.write(f"{i},0,0,False,False,camelyon16_train_normal_{i // 1000:03d}\n")


def check_sample(root: Path, store: Path, n: int) -> None:
    """A few random rows of the store equal the HDF5 rows."""
    images = np.load(StoreDir(store).images, mmap_mode="r")
    assert images.shape == (n, 96, 96, 3), images.shape
    with h5py.File(root / f"{PREFIX}_x.h5", "r") as f:
        for i in np.random.default_rng(1).integers(0, n, 16):
            assert np.array_equal(images[i], f["x"][i]), f"row {i} differs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=262_144, help="patches (default 262144 = PCam train, 7.2 GB)")
    ap.add_argument(
        "--tmp", default=tempfile.gettempdir(), help="where to put the temporary data (default /tmp)"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="histoscan-bench-prepare-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        generate(work, args.n)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(work), str(work / "store")],
            capture_output=True,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        wall = child["prepare_s"]
        check_sample(work, work / "store", args.n)
        packed_gb = args.n * 96 * 96 * 3 / 1e9
        result = {
            "n": args.n,
            "packed_gb": round(packed_gb, 2),
            "generate_s": round(gen_s, 1),
            "prepare_s": round(wall, 1),
            "images_per_s": round(args.n / wall),
            "mb_per_s": round(packed_gb * 1e3 / wall),
            "baseline_rss_mb": child["baseline_rss_mb"],
            "peak_rss_mb": child["peak_rss_mb"],
            "growth_mb": child["peak_rss_mb"] - child["baseline_rss_mb"],
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(
                "| n | packed | prepare wall | throughput | peak RSS (after imports -> peak) |\n"
                "|---|---|---|---|---|\n"
                f"| {args.n:,} | {packed_gb:.2f} GB | {wall:.1f} s | {args.n / wall:,.0f} img/s "
                f"({packed_gb * 1e3 / wall:,.0f} MB/s) | "
                f"{child['baseline_rss_mb']} -> {child['peak_rss_mb']} MB |"
            )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
