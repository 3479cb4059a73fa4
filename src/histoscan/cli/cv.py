"""`histoscan cv`: patient-grouped k-fold cross-validation with the same options as `train`."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histoscan.config import TrainConfig

FINAL_CONFIG = "final-config.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `cv` subcommand (train's options, --tta among them, plus --folds)."""
    from histoscan.cli.train import add_train_options
    from histoscan.config import TrainConfig
    from histoscan.ranges import field_option

    p = sub.add_parser(
        "cv",
        help="grouped k-fold cross-validation: a run per fold, pooled metrics with CIs",
        description="Train one run per fold (OUT/fold-<i>), evaluate each on its held-out "
        "patients, pool the predictions into OUT/cv.json.",
    )
    add_train_options(p)
    p.add_argument(
        "--folds", **field_option(TrainConfig, "folds", default=5), help="number of grouped folds (default 5)"
    )
    p.add_argument(
        "--use-folds",
        metavar="K,K,...",
        help="run only these folds of the split (0-based, e.g. 0 or 0,1): a cheaper screen whose pooled figures "
        "cover those folds' patches only (default: all)",
    )
    p.add_argument(
        "--resume", action="store_true", help="keep the folds already trained and evaluated in --out"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the cross-validation, one line per fold start and result, then the pooled figures and the command
    that trains the final model with the same options on all the data (its options in OUT/final-config.yaml)."""
    from histoscan.cli.train import config_from_args
    from histoscan.cv.crossval import crossval

    config = config_from_args(args)
    r = crossval(
        config,
        folds=args.folds,
        force=args.force,
        echo=_fold_echo,
        resume=args.resume,
        use_folds=parse_folds(args.use_folds),
    )
    m = r["pooled"]
    ci = m["ci95"]
    used = "" if len(r["use_folds"]) == r["folds"] else f" (folds {','.join(map(str, r['use_folds']))} only)"
    print(f"{r['folds']}-fold CV{used}, {m['n']} patches, {r['seconds'] / 60:.1f} min (pooled, 95% CIs)")
    for k in ("auc", "balanced_accuracy", "f1"):
        lo, hi = ci[k] if ci.get(k) else (float("nan"), float("nan"))
        print(f"  {k:18s} {m[k]:.3f}  [{lo:.3f}, {hi:.3f}]")
    out = Path(config.out)
    final = final_config(config, out)
    print(f"wrote {out}/cv.json, {out}/predictions.csv and {final}")
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
    path = out / FINAL_CONFIG
    dataclasses.replace(config, out="", folds=None, fold=None, limit_batches=None).save(path)
    return path


def parse_folds(text: str | None) -> list[int] | None:
    """`--use-folds K,K,...` as fold numbers (None stays None); a clear error for anything else."""
    from histoscan.errors import HistoscanInputError

    if text is None:
        return None
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise HistoscanInputError(f"--use-folds {text}: give fold numbers such as 0 or 0,1") from None
