"""`histoscan evaluate`: metrics with confidence intervals, plots and an HTML report on labelled data."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.model import EvaluateOptions


def register(sub: Any) -> None:
    """Add the `evaluate` subcommand (options: :class:`histoscan.options.model.EvaluateOptions`)."""
    p = add_command(
        sub,
        "evaluate",
        run,
        help="metrics (with patient-level 95% CIs) and an HTML report",
        description="Score a trained model on labelled data: metrics.json, predictions.csv, "
        "roc/pr/confusion/calibration plots and a self-contained report.html.",
    )
    add_options(p, EvaluateOptions)


def _ci(m: dict, key: str) -> str:
    c = m["ci95"].get(key)
    return f" [{c[0]:.3f}, {c[1]:.3f}]" if c else ""


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the headline numbers."""
    from histoscan.evaluation.evaluate import (
        evaluate,
    )  # lazy: `histoscan --help` stays fast (torch, matplotlib)
    from histoscan.folders import EvalDir

    o = build(EvaluateOptions, args)
    m = evaluate(
        o.model,
        o.data,
        o.out,
        tta=o.tta,
        batch_size=o.batch_size,
        target_sensitivity=o.target_sensitivity,
        backend=o.backend,
        n_boot=o.n_boot,
        force=o.force,
        skip_bad=o.skip_bad,
        device=o.device,
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
        f"next: histoscan predict {o.model} --data NEW_DATA --out predictions.csv  # threshold {m['threshold']:.3g}"
    )
    return 0
