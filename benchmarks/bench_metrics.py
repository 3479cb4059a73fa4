"""Time compute_metrics (1000-resample bootstrap CIs) on 30k synthetic patches, patch- and patient-level."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from histoscan.scoring.metrics import compute_metrics


def main() -> None:
    """Print seconds per compute_metrics call for the patch bootstrap and the group bootstrap."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--groups", type=int, default=300)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, args.n)
    groups = rng.integers(0, args.groups, args.n).astype(str)
    results = {}
    for ties, p in (("unique", rng.random(args.n)), ("3 decimals", None)):
        p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(3) if p is None else (p + y) / 2
        for unit, g in (("patch", None), ("group", groups)):
            wall, cpu = [], []
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                compute_metrics(y, p, 0.5, g, n_boot=args.n_boot)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            # CPU time too: on a shared machine wall time mostly measures the other tenants
            results[f"{unit} bootstrap, {ties} scores"] = {
                "wall_s": round(min(wall), 3),
                "cpu_s": round(min(cpu), 3),
            }
    print(
        json.dumps({"n": args.n, "n_boot": args.n_boot, "groups": args.groups, "timings": results}, indent=1)
    )


if __name__ == "__main__":
    main()
