"""`histoscan cv`: patient-grouped k-fold cross-validation with the same options as `train`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `cv` subcommand (train's options plus --folds and --tta)."""
    from histoscan.cli.evaluate import add_tta_option
    from histoscan.cli.train import add_train_options

    p = sub.add_parser(
        "cv",
        help="grouped k-fold cross-validation: a run per fold, pooled metrics with CIs",
        description="Train one run per fold (OUT/fold-<i>), evaluate each on its held-out "
        "patients, pool the predictions into OUT/cv.json.",
    )
    add_train_options(p)
    p.add_argument("--folds", type=int, default=5, help="number of grouped folds, at least 2 (default 5)")
    p.add_argument(
        "--use-folds",
        metavar="K,K,...",
        help="run only these folds of the split (0-based, e.g. 0 or 0,1): a cheaper screen whose pooled figures "
        "cover those folds' patches only (default: all)",
    )
    add_tta_option(p)
    p.add_argument(
        "--resume", action="store_true", help="keep the folds already trained and evaluated in --out"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the cross-validation, one line per fold start and result, then the pooled figures."""
    from histoscan.cli.train import config_from_args
    from histoscan.training.crossval import crossval

    r = crossval(
        config_from_args(args),
        folds=args.folds,
        tta=args.tta,
        force=args.force,
        echo=lambda line: print(line, flush=True),
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
    print(f"wrote {args.out}/cv.json and {args.out}/predictions.csv")
    print(f"next: histoscan train --data {args.data} --out runs/final  (the same options, on all the data)")
    return 0


def parse_folds(text: str | None) -> list[int] | None:
    """`--use-folds K,K,...` as fold numbers (None stays None); a clear error for anything else."""
    from histoscan.errors import HistoscanInputError

    if text is None:
        return None
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise HistoscanInputError(f"--use-folds {text}: give fold numbers such as 0 or 0,1") from None
