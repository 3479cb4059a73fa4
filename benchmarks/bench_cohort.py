"""Cohort throughput of `histoscan slides`: slides/hour, tiles/s and memory per worker, local vs Ray workers.

    python benchmarks/bench_cohort.py                       # local x1, ray x1, ray x2 on 6 slides
    python benchmarks/bench_cohort.py --cases ray:2 --tiffs 2 --size 8192

The cohort is the two shared slides (TCGA-CR-7395 with mpp 0.5 in the CSV: it records none) plus `--tiffs`
pyramidal JPEG TIFFs of real tissue made by make_big_tiff.py (cached in --work). Each case runs the real CLI in
a fresh process into a fresh folder, with an untrained simple-cnn at 96 px and 0.972 µm/px (speed does not
depend on the weights). Wall time is the whole command (imports, model loading, Ray start and stop); "busy" is
the sum of the per-slide seconds the workers report; overhead = wall - the busiest worker's busy time (start:
imports, model loading, Ray; stop; idle), and "tiles/s while mapping" = tiles / that busiest worker's time. Peak
RSS per worker is each worker process's own ru_maxrss (recorded in DIR/<id>/.done.json); the driver's is from
wait4.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import run_timed, shared_data
from bench_slide import make_run

from histoscan.folders import CohortDir

HERE = Path(__file__).resolve().parent


def make_cohort(work: Path, tiffs: int, size: int) -> Path:
    """cohort.csv of the shared slides and `tiffs` synthetic tissue TIFFs (built once, then reused)."""
    slides = shared_data() / "slides"
    rows = [(slides / "cmu-1-small-region.svs", ""), (slides / "tcga-cr-7395-01a-01-ts1.svs", "0.5")]
    for k in range(tiffs):
        path = work / f"tissue-{size}-{k}.tif"
        if not path.is_file():
            cmd = [sys.executable, str(HERE / "make_big_tiff.py"), str(path), "--size", str(size)]
            subprocess.run([*cmd, "--seed", str(k)], check=True, stdout=subprocess.DEVNULL)
        rows.append((path, ""))
    out = work / "slides.csv"  # the cohort's INPUT list
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mpp"])
        w.writerows(rows)
    return out


def run_case(run: Path, cohort: Path, out: Path, engine: str, workers: int, extra: list[str]) -> dict:
    """One `histoscan slides` process into a fresh `out`: throughput and memory figures."""
    exe = str(Path(sys.executable).with_name("histoscan"))
    cmd = [exe, "slides", str(run), str(cohort), "--out", str(out), "--force", "--engine", engine]
    cmd += ["--model-mpp", "0.972", "--no-progress", "--read-threads", "1", *extra]
    if engine == "ray":
        cmd += ["--workers", str(workers)]
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    wall, usage, _, _ = run_timed(cmd)
    cohort = CohortDir(out)
    with cohort.csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    markers = [json.loads(cohort.done_marker(r["id"]).read_text()) for r in rows]
    rss: dict[int, float] = {}
    busy: dict[int, float] = {}
    for m in markers:
        pid = m["worker"]["pid"]
        rss[pid] = max(rss.get(pid, 0.0), m["worker"]["peak_rss_mb"])
        busy[pid] = busy.get(pid, 0.0) + m["seconds"]
    tiles = sum(m["tissue_tiles"] for m in markers)
    return {
        "engine": engine,
        "workers": workers,
        "slides": len(rows),
        "tissue_tiles": tiles,
        "wall_s": round(wall, 1),
        "busy_s": round(sum(busy.values()), 1),
        # what the busiest worker did not spend on slides: start (imports, model, Ray), stop, waiting
        "overhead_s": round(wall - max(busy.values()), 1),
        "mapping_tiles_per_s": round(tiles / max(busy.values()), 1),
        "slides_per_h": round(len(rows) / wall * 3600),
        "tiles_per_s": round(tiles / wall, 1),
        "worker_rss_mb": sorted(round(v) for v in rss.values()),
        "driver_rss_mb": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    """Run every case and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/histoscan-bench-cohort"), help="cache + outputs")
    ap.add_argument("--tiffs", type=int, default=4, help="synthetic tissue TIFFs in the cohort")
    ap.add_argument("--size", type=int, default=20480, help="their level-0 side (px, multiple of 512)")
    ap.add_argument("--cases", default="local:1,ray:1,ray:2", help="engine:workers, comma-separated")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `histoscan slides` options")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cohort = make_cohort(args.work, args.tiffs, args.size)
    run = make_run(args.work / "runs", "simple-cnn")
    extra = [a for a in args.extra if a != "--"]
    results = []
    for case in args.cases.split(","):
        engine, n = case.split(":")
        r = run_case(run, cohort, args.work / f"out-{engine}-{n}", engine, int(n), extra)
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(
        f"\ncpus {os.cpu_count()}, cohort {cohort} ({args.tiffs} TIFFs of {args.size} px + 2 shared slides)"
    )
    print(
        "| engine | workers | slides | tissue tiles | wall s | busy s | slides/h | tiles/s "
        "| overhead s | tiles/s while mapping | RSS MB per worker | driver RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} | {r['workers']} | {r['slides']} | {r['tissue_tiles']} | {r['wall_s']} | "
            f"{r['busy_s']} | {r['slides_per_h']} | {r['tiles_per_s']} | {r['overhead_s']} | "
            f"{r['mapping_tiles_per_s']} | "
            f"{' / '.join(map(str, r['worker_rss_mb']))} | {r['driver_rss_mb']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
