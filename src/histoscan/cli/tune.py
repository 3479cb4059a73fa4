"""`histoscan tune`: Optuna search over grouped CV folds; resumable; writes trials.csv and best.yaml."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.training import TuneOptions


def register(sub: Any) -> None:
    """Add the `tune` subcommand (train's options fix everything that is not searched; :class:`TuneOptions`)."""
    from histoscan.cli.train import add_train_options

    p = add_command(
        sub,
        "tune",
        run,
        help="hyper-parameter search (Optuna) on grouped CV folds, resumable",
        description="Search epochs, schedule, learning rate, weight decay, dropout, batch size and augmentation "
        "(histoscan.training.tune.SEARCH_SPACE) by the mean held-out AUC over --use-folds of a grouped "
        "--folds split. Bad trials are pruned on their first fold. The study is OUT/study.db: run the same "
        "command again to continue a tune that was stopped (--trials and --timeout may change; other data, "
        "folds, searched fields or options are refused: --force starts a new study). Writes OUT/trials.csv, "
        "OUT/importance.csv + .png (fANOVA parameter importance) and OUT/best.yaml (use: histoscan train "
        "--config OUT/best.yaml; a --limit-batches smoke cap is left out of it).",
        config=False,  # --config FILE here is a TrainConfig (add_train_options)
    )
    add_train_options(p)
    add_options(p, TuneOptions)


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the study; one line per trial, then the best configuration."""
    from histoscan.cli.train import config_from_args
    from histoscan.folders import TuneDir
    from histoscan.training.tune import tune

    config = config_from_args(args)
    o = build(TuneOptions, args)
    r = tune(
        config,
        config.out,
        n_trials=o.trials,
        folds=o.folds,
        use_folds=o.use_folds,
        params=o.params,
        timeout=o.timeout,
        force=bool(args.force),
        echo=lambda line: print(line, flush=True),
    )
    if r["best_value"] is None:
        print(f"no trial completed; see {TuneDir(r['out']).trials_csv}")
        return 0
    shown = ", ".join(f"{k}={v}" for k, v in r["best_params"].items())
    capped = (
        f" (trials ran with --limit-batches {r['limit_batches']}: a smoke run)" if r["limit_batches"] else ""
    )
    print(f"best: mean AUC {r['best_value']:.4f} with {shown}{capped}")
    print(f"wrote {TuneDir(r['out']).trials_csv} and {r['best_config']}")
    print(f"next: histoscan train --config {r['best_config']} --data {config.data} --out runs/tuned")
    return 0
