"""`histoscan cv`: patient-grouped k-fold cross-validation with the same options as `train`."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.training import CvOptions

if TYPE_CHECKING:
    from histoscan.config import TrainConfig


def register(sub: Any) -> None:
    """Add the `cv` subcommand (train's options, --tta among them, plus :class:`CvOptions`)."""
    from histoscan.cli.train import add_train_options

    p = add_command(
        sub,
        "cv",
        run,
        help="grouped k-fold cross-validation: a run per fold, pooled metrics with CIs",
        description="Train one run per fold (OUT/fold-<i>), evaluate each on its held-out "
        "patients, pool the predictions into OUT/cv.json.",
        config=False,  # --config FILE here is a TrainConfig (add_train_options)
    )
    add_train_options(p)
    add_options(p, CvOptions)


def run(args: argparse.Namespace) -> int:
    """Run the cross-validation, one line per fold start and result, then the pooled figures and the command
    that trains the final model with the same options on all the data (its options in OUT/final-config.yaml)."""
    from histoscan.cli.train import config_from_args
    from histoscan.cv.crossval import crossval

    config = config_from_args(args)
    o = build(CvOptions, args)
    r = crossval(
        config, folds=o.folds, force=bool(args.force), echo=_fold_echo, resume=o.resume, use_folds=o.use_folds
    )
    m = r["pooled"]
    ci = m["ci95"]
    used = "" if len(r["use_folds"]) == r["folds"] else f" (folds {','.join(map(str, r['use_folds']))} only)"
    print(f"{r['folds']}-fold CV{used}, {m['n']} patches, {r['seconds'] / 60:.1f} min (pooled, 95% CIs)")
    for k in ("auc", "balanced_accuracy", "f1"):
        lo, hi = ci[k] if ci.get(k) else (float("nan"), float("nan"))
        print(f"  {k:18s} {m[k]:.3f}  [{lo:.3f}, {hi:.3f}]")
    from histoscan.folders import CvDir

    out = Path(config.out)
    final = final_config(config, out)
    cv = CvDir(out)
    print(f"wrote {cv.summary_path}, {cv.predictions_path} and {final}")
    command = ["histoscan", "train", "--config", str(final), "--data", config.data, "--out", f"{out}-final"]
    print(f"next: {shlex.join(command)}  # the same options, on all the data")
    return 0


def _fold_echo(line: str) -> None:
    """Print a fold's lines, but not its training summary's `next:` command: cv has evaluated the fold."""
    if not line.startswith("next:"):
        print(line, flush=True)


def final_config(config: TrainConfig, out: Path) -> Path:
    """Write OUT/final-config.yaml: the cross-validated options for `histoscan train --config` (no fold, no
    run folder, and no --limit-batches cap: a smoke-run cap is no part of the configuration to train with)."""
    from histoscan.folders import CvDir

    path = CvDir(out).final_config_path
    dataclasses.replace(config, out="", folds=None, fold=None, limit_batches=None).save(path)
    return path
