"""Throughput of ONNX Runtime vs PyTorch eager (contiguous and channels_last) on the same exported run.

Usage: python benchmarks/bench_onnx.py [--models simple-cnn resnet50] [--batches 1 64] [--size 96]
       [--threads N] [--seconds S] [--json FILE]

Each model gets a run folder with seeded random weights (throughput does not depend on the values), exported
with `histoscan.export.onnx.export_onnx` (parity-checked), then timed on uint8 N x S x S x 3 batches, preprocessing
included on both sides. Figures are patches/s, the median of 5 timed windows after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from histoscan.config import TrainConfig
from histoscan.export.onnx import export_onnx
from histoscan.folders import RunDir
from histoscan.inference.onnx import OnnxPredictor
from histoscan.inference.predictor import load_predictor
from histoscan.models import create_model
from histoscan.models.classifier import PatchClassifier


def make_run(root: Path, model: str, size: int) -> Path:
    """A run folder with seeded random weights."""
    torch.manual_seed(0)
    root.mkdir(parents=True)
    cfg = TrainConfig(model=model, image_size=size, mpp=0.972)
    run = RunDir(root)
    run.write_config(cfg)
    net = PatchClassifier(create_model(model, dropout=cfg.dropout))
    run.checkpoints.mkdir()
    hp = {"config": cfg.to_dict(), "image_size": size, "mpp": 0.972}
    state = {"classifier." + k: v for k, v in net.state_dict().items()}
    torch.save({"hyper_parameters": hp, "state_dict": state}, run.best_ckpt)
    run.write_threshold({"threshold": 0.5})
    return root


def rate(fn: Callable[[], object], batch: int, seconds: float) -> float:
    """Median patches/s over 5 windows of about `seconds`/5 each, after a warm-up."""
    for _ in range(3):
        fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds / 10 or n < 2:  # calibrate calls per window
        fn()
        n += 1
    per_call = (time.perf_counter() - t0) / n
    calls = max(1, int(seconds / 5 / per_call))
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def _eager(model: PatchClassifier, x: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return model(x)

    return call


def bench_model(
    model: str, size: int, batches: list[int], threads: int, seconds: float, tmp: Path
) -> list[dict]:
    """Rows of {model, batch, backend, patches_s} for one model."""
    run = make_run(tmp / model, model, size)
    onnx_path = export_onnx(run, tmp / f"{model}.onnx")
    backend = OnnxPredictor(onnx_path, threads=threads)
    clf = load_predictor(run, "cpu").classifier.eval()
    clf_cl = load_predictor(run, "cpu").classifier.eval().to(memory_format=torch.channels_last)
    rows = []
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        found = {
            "torch eager": rate(_eager(clf, torch.from_numpy(x)), b, seconds),
            "torch eager channels_last": rate(_eager(clf_cl, torch.from_numpy(x)), b, seconds),
            "onnxruntime": rate(lambda x=x, b=b: backend.predict_logits(x, batch_size=b), b, seconds),
        }
        best_torch = max(found["torch eager"], found["torch eager channels_last"])
        for name, r in found.items():
            rows.append({"model": model, "batch": b, "backend": name, "patches_s": round(r, 1)})
        rows.append(
            {
                "model": model,
                "batch": b,
                "backend": "ratio ort / best torch",
                "patches_s": round(found["onnxruntime"] / best_torch, 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (and JSON when asked)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["simple-cnn", "resnet50"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, "
        f"{args.size} px, CPU: {os.cpu_count()} logical cores",
        file=sys.stderr,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rows += bench_model(model, args.size, args.batches, args.threads, args.seconds, Path(tmp))
    print(f"{'model':<12} {'batch':>5}  {'backend':<28} {'patches/s':>10}")
    for r in rows:
        print(f"{r['model']:<12} {r['batch']:>5}  {r['backend']:<28} {r['patches_s']:>10}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
