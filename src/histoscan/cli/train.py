"""`histoscan train`: parse options into a TrainConfig and run training."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from histoscan.arguments import add_field, add_options
from histoscan.cli.parsing import add_command
from histoscan.config import TrainConfig, config_from_options
from histoscan.errors import HistoscanInputError
from histoscan.options.training import RunOptions
from histoscan.training.resume import resumable_text


def register(sub: Any) -> None:
    """Add the `train` subcommand. Options, help, choices and defaults come from TrainConfig's fields."""
    p = add_command(
        sub,
        "train",
        run,
        help="train a tumour/normal classifier on a labelled source or store",
        description="Train with a patient/slide-grouped split; writes a run folder.",
        config=False,  # --config FILE here is a TrainConfig (add_train_options)
    )
    add_train_options(p)
    resume = RunOptions.__dataclass_fields__["resume"]
    add_field(p, resume, help=f"{resume.metadata['help']}: {resumable_text()}")


def add_train_options(p: Any) -> None:
    """Options shared by `train`, `cv` and `tune`: --config, --data, --out, every TrainConfig option, --force."""
    fields = TrainConfig.__dataclass_fields__
    add_options(p, RunOptions, exclude=("resume", "force"))
    add_field(p, fields["data"])
    add_field(p, fields["out"])
    add_options(p, TrainConfig)
    add_options(p, RunOptions, exclude=("resume", "config"))


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

    resume = bool(args.resume)
    train(
        config_from_args(args, required=("out",) if resume else ("data", "out")),
        force=bool(args.force),
        resume=resume,
        echo=lambda line: print(line, flush=True),
        given=given_options(args) if resume else None,
    )
    return 0
