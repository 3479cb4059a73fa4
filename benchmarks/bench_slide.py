"""Wall time and peak RSS of `histoscan slide` on the shared slides (and optionally a big synthetic one).

    python benchmarks/bench_slide.py                               # simple-cnn + resnet50, mpp 0.972 and 0.5
    python benchmarks/bench_slide.py --big /tmp/big.tif --models simple-cnn --model-mpps 0.972

Each case runs the real CLI in a fresh process (imports and model loading included) with an untrained model
of that architecture at 96 px (speed does not depend on the weights); peak RSS is the child's own
`ru_maxrss` from wait4. The TCGA slide records no µm/px and is run with --mpp 0.5 (assumed 20x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from _common import run_timed, shared_data

from histoscan.config import TrainConfig
from histoscan.folders import RunDir, SlideDir
from histoscan.models import create_model
from histoscan.models.classifier import PatchClassifier

SLIDE_MPP = {"tcga-cr-7395-01a-01-ts1.svs": 0.5}  # slides without µm/px metadata


def make_run(root: Path, model: str, size: int = 96) -> Path:
    """An untrained run folder for `model` (no patch µm/px recorded: the bench passes --model-mpp)."""
    run = RunDir(root / model)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(model=model, image_size=size)
    run.write_config(cfg)
    state = {"classifier." + k: v for k, v in PatchClassifier(create_model(model)).state_dict().items()}
    hp = {"config": cfg.to_dict(), "image_size": size, "mpp": None}
    torch.save({"hyper_parameters": hp, "state_dict": state}, run.best_ckpt)
    return run.path


def run_case(run: Path, slide: Path, model_mpp: float, out: Path, extra: list[str]) -> dict:
    """One `histoscan slide` process: wall seconds, peak RSS (MB) and the summary it wrote."""
    exe = str(Path(sys.executable).with_name("histoscan"))  # the console script, as users run it
    cmd = [exe, "slide", str(run), str(slide), "--out", str(out), "--force"]
    cmd += ["--model-mpp", str(model_mpp), "--no-progress", *extra]
    if slide.name in SLIDE_MPP:
        cmd += ["--mpp", str(SLIDE_MPP[slide.name])]
    wall, usage, _, _ = run_timed(cmd)
    summary = SlideDir(out).read_summary()
    return {
        "slide": slide.name,
        "size": summary["dimensions"],
        "model": run.name,
        "model_mpp": model_mpp,
        "level": summary["level"],
        "tissue_tiles": summary["n_tissue_tiles"],
        "wall_s": round(wall, 2),
        "map_s": summary["seconds"],
        "tiles_per_s": round(summary["n_tissue_tiles"] / max(summary["timings_s"]["tiles"], 1e-9), 1),
        "timings_s": summary["timings_s"],
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # robust to other load on a shared machine
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    """Run every (slide, model, model mpp) case and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", nargs="*", type=Path, default=None, help="default: the shared slides")
    ap.add_argument("--big", type=Path, default=None, help="also run this (large) slide")
    ap.add_argument("--models", nargs="*", default=["simple-cnn", "resnet50"])
    ap.add_argument("--model-mpps", nargs="*", type=float, default=[0.972, 0.5])
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `histoscan slide` options")
    args = ap.parse_args()
    slides = args.slides or sorted((shared_data() / "slides").glob("*.svs"))
    if args.big:
        slides.append(args.big)
    extra = [a for a in args.extra if a != "--"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {m: make_run(Path(tmp), m) for m in args.models}
        for slide in slides:
            for model in args.models:
                for mpp in args.model_mpps:
                    r = run_case(runs[model], slide, mpp, Path(tmp) / "out", extra)
                    rows.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    print(
        f"\ntorch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, cuda {torch.cuda.is_available()}"
    )
    print(
        "| slide | model | model µm/px | level | tissue tiles | wall s | CPU s | map s | tiles/s | RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['slide']} | {r['model']} | {r['model_mpp']} | {r['level']} | {r['tissue_tiles']} | "
            f"{r['wall_s']} | {r['cpu_s']} | {r['map_s']} | {r['tiles_per_s']} | {r['peak_rss_mb']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
