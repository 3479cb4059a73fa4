"""`histoscan train`: parse options into a TrainConfig and run training."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from histoscan.config import TrainConfig, add_config_options, config_from_options
from histoscan.errors import HistoscanInputError
from histoscan.training.resume import resumable_text


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
        help="continue the run in --out from checkpoints/last.ckpt with its own settings (RUN/config.yaml; "
        "--data may be left out): an option not given keeps the run's value, and one given must equal it, "
        f"except these, which may change (and are recorded): {resumable_text()}",
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


def config_from_args(args: argparse.Namespace, required: tuple[str, ...] = ("data", "out")) -> TrainConfig:
    """TrainConfig from --config FILE (if given), then every option the user gave (validated: bad values exit 2);
    each of `required` must be given in one of the two."""
    values: dict[str, Any] = dict(vars(args))
    if values.get("stain"):
        from histoscan.stain import load_stain  # lazy: only runs that use stain normalisation

        values["stain"] = load_stain(values["stain"])
    base = TrainConfig.load(Path(args.config)) if getattr(args, "config", None) else None
    config = config_from_options(values, base)
    for name in required:
        if not getattr(config, name):
            raise HistoscanInputError(f"--{name}: required (on the command line or in --config FILE)")
    return config


def given_options(args: argparse.Namespace) -> set[str]:
    """The TrainConfig fields the user set: options given on the command line, and the keys of --config FILE."""
    names = set(TrainConfig.__dataclass_fields__)
    given = {k for k, v in vars(args).items() if k in names and v is not None}
    if getattr(args, "config", None):
        TrainConfig.load(Path(args.config))  # a bad file is refused naming itself
        given |= set(yaml.safe_load(Path(args.config).read_text()) or {})
    return given


def run(args: argparse.Namespace) -> int:
    """Train, printing a start line, progress and an end summary with the next command (rank 0 only).

    With --resume, the options given are checked against the run's own (see `training.resume.resume_config`).
    """
    from histoscan.training.train import train

    train(
        config_from_args(args, required=("out",) if args.resume else ("data", "out")),
        force=args.force,
        resume=args.resume,
        echo=lambda line: print(line, flush=True),
        given=given_options(args) if args.resume else None,
    )
    return 0
