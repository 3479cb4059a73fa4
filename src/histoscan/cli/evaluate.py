"""`histoscan evaluate`: metrics with confidence intervals, plots and an HTML report on labelled data."""

from __future__ import annotations

import argparse

from histoscan.config import TrainConfig
from histoscan.ranges import field_option, number


def add_tta_option(p: argparse.ArgumentParser) -> None:
    """--tta, shared by evaluate, predict and cv."""
    p.add_argument(
        "--tta",
        type=int,
        nargs="?",
        const=8,
        default=None,
        choices=[0, 4, 8],
        help="test-time augmentation: 4 rotations or 8 dihedral views, logits averaged "
        "(--tta alone = 8; default: the TTA the run was trained to be scored with, its config's tta)",
    )


def add_inference_options(p: argparse.ArgumentParser, batch_size: int = 256) -> None:
    """--tta, --batch-size, --backend, --skip-bad and --force, shared by evaluate and predict."""
    add_tta_option(p)
    p.add_argument(
        "--batch-size",
        **number(int, low=1, high=65_536),
        default=batch_size,
        metavar="B",
        help=f"patches per forward pass, before TTA views (default {batch_size})",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="auto (from MODEL: .onnx -> ONNX Runtime, run/ckpt -> torch, CUDA when available), torch, or "
        "onnx (RUN/model.onnx for a run folder)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted and listed)")
    p.add_argument("--force", action="store_true", help="overwrite existing output")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    p = sub.add_parser(
        "evaluate",
        help="metrics (with patient-level 95%% CIs) and an HTML report",
        description="Score a trained model on labelled data: metrics.json, predictions.csv, "
        "roc/pr/confusion/calibration plots and a self-contained report.html.",
    )
    p.add_argument("run", metavar="MODEL", help="run folder, checkpoint or .onnx export")
    p.add_argument(
        "--data", required=True, help="labelled source (PCam, Kaggle HCD, manifest, folders) or STORE"
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN/eval-<data name>/)")
    add_inference_options(p)
    p.add_argument(
        "--target-sensitivity",
        **field_option(TrainConfig, "target_sensitivity"),
        metavar="S",
        help="re-choose the threshold on the run's validation split to reach sensitivity S",
    )
    p.add_argument(
        "--n-boot",
        **number(int, low=0, high=1_000_000),
        default=1000,
        help="bootstrap resamples for the CIs (0: none; default 1000)",
    )
    p.set_defaults(func=run)


def _ci(m: dict, key: str) -> str:
    c = m["ci95"].get(key)
    return f" [{c[0]:.3f}, {c[1]:.3f}]" if c else ""


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the headline numbers."""
    from histoscan.evaluation.evaluate import (
        evaluate,
    )  # lazy: `histoscan --help` stays fast (torch, matplotlib)
    from histoscan.folders import EvalDir

    m = evaluate(
        args.run,
        args.data,
        args.out,
        tta=args.tta,
        batch_size=args.batch_size,
        target_sensitivity=args.target_sensitivity,
        backend=args.backend,
        n_boot=args.n_boot,
        force=args.force,
        skip_bad=args.skip_bad,
        echo=print,
    )
    for line in m["warnings"]:
        print(f"warning: {line}")
    for note in m["notes"]:
        if not note.startswith("Warning: "):  # the warnings, just printed as such
            print(f"note: {note}")
    fmt = lambda k: "n/a" if m[k] is None else f"{m[k]:.3f}"  # noqa: E731
    print(
        f"{m['n']} patches ({m['n_positive']} tumour, subset: {m['subset']}), {m['model']} via {m['backend']}, "
        f"TTA {m['tta']} view(s), threshold {m['threshold']:.3g} ({m['threshold_source']})"
    )
    print(
        f"AUC {fmt('auc')}{_ci(m, 'auc')}  balanced accuracy {fmt('balanced_accuracy')}"
        f"{_ci(m, 'balanced_accuracy')}  F1 {fmt('f1')}{_ci(m, 'f1')}"
    )
    print(
        f"sensitivity {fmt('recall')}  specificity {fmt('specificity')}  PR AUC {fmt('pr_auc')}  "
        f"Brier {fmt('brier')}  ECE {fmt('ece')}"
    )
    print(f"report: {EvalDir(m['out']).report_path}")
    print(
        f"next: histoscan predict {args.run} --data NEW_DATA --out predictions.csv  # threshold {m['threshold']:.3g}"
    )
    return 0
