"""`histoscan tune`: Optuna search over grouped CV folds; resumable; writes trials.csv and best.yaml."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `tune` subcommand (train's options fix everything that is not searched)."""
    from histoscan.cli.train import add_train_options
    from histoscan.config import TrainConfig
    from histoscan.ranges import field_option, number

    p = sub.add_parser(
        "tune",
        help="hyper-parameter search (Optuna) on grouped CV folds, resumable",
        description="Search epochs, schedule, learning rate, weight decay, dropout, batch size and augmentation "
        "(histoscan.training.tune.SEARCH_SPACE) by the mean held-out AUC over --use-folds of a grouped "
        "--folds split. Bad trials are pruned on their first fold. The study is OUT/study.db: run the same "
        "command again to continue a tune that was stopped (--trials and --timeout may change; other data, "
        "folds, searched fields or options are refused: --force starts a new study). Writes OUT/trials.csv, "
        "OUT/importance.csv + .png (fANOVA parameter importance) and OUT/best.yaml (use: histoscan train "
        "--config OUT/best.yaml; a --limit-batches smoke cap is left out of it).",
    )
    add_train_options(p)
    p.add_argument(
        "--trials",
        **number(int, low=1, high=100_000),
        default=20,
        help="finished trials the study should hold (default 20)",
    )
    p.add_argument(
        "--folds",
        **field_option(TrainConfig, "folds", default=5),
        help="grouped folds of the split (default 5)",
    )
    p.add_argument(
        "--use-folds", default="0", metavar="K,K", help="folds each trial trains and scores (default 0)"
    )
    p.add_argument("--params", metavar="NAMES", help="comma list of the searched fields (default: all)")
    p.add_argument(
        "--timeout",
        **number(float, low=0, low_open=True),
        metavar="S",
        help="start no new trial after S seconds",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the study; one line per trial, then the best configuration."""
    from histoscan.cli.cv import parse_folds
    from histoscan.cli.train import config_from_args
    from histoscan.folders import TuneDir
    from histoscan.training.tune import tune

    use_folds = parse_folds(args.use_folds)
    r = tune(
        config_from_args(args),
        args.out,
        n_trials=args.trials,
        folds=args.folds,
        use_folds=use_folds,
        params=[p.strip() for p in args.params.split(",")] if args.params else None,
        timeout=args.timeout,
        force=args.force,
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
    print(f"next: histoscan train --config {r['best_config']} --data {args.data} --out runs/tuned")
    return 0
