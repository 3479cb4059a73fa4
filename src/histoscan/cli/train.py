"""`histoscan train`: parse options into a TrainConfig and run training."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoscan.config import TrainConfig, add_config_options, config_from_options
from histoscan.errors import HistoscanInputError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand. Options, help, choices and defaults come from TrainConfig's fields."""
    p = sub.add_parser(
        "train",
        help="train a tumour/normal classifier on a labelled source or store",
        description="Train with a patient/slide-grouped split; writes a run folder.",
    )
    add_train_options(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from checkpoints/last.ckpt with its own config (--epochs and "
        "--patience may be given anew)",
    )
    p.set_defaults(func=run)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `cv`."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML of options as in RUN/config.yaml or a tune's best.yaml; options given here override it",
    )
    p.add_argument("--data", help=TrainConfig.__dataclass_fields__["data"].metadata["help"] + " (required)")
    p.add_argument(
        "--out",
        help="run folder to create (built aside, moved into place once training starts)",
    )
    add_config_options(p)
    p.add_argument("--force", action="store_true", help="replace an existing run folder")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from --config FILE (if given), then every option the user gave (validated: bad values exit 2)."""
    values: dict[str, Any] = dict(vars(args))
    if values.get("stain"):
        from histoscan.stain import load_stain  # lazy: only runs that use stain normalisation

        values["stain"] = load_stain(values["stain"])
    base = TrainConfig.load(Path(args.config)) if getattr(args, "config", None) else None
    config = config_from_options(values, base)
    for name in ("data", "out"):
        if not getattr(config, name):
            raise HistoscanInputError(f"--{name}: required (on the command line or in --config FILE)")
    return config


def run(args: argparse.Namespace) -> int:
    """Train, printing a start line, progress and an end summary with the next command (rank 0 only)."""
    from histoscan.training.train import train

    overrides = {"epochs"} | ({"patience"} if args.patience is not None else set())
    train(
        config_from_args(args),
        force=args.force,
        resume=args.resume,
        echo=lambda line: print(line, flush=True),
        overrides=overrides,
    )
    return 0
