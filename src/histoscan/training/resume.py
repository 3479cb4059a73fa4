"""What `histoscan train --resume` continues with: the run's own recorded settings, and the few options that
may change when a run is continued. Light (no torch/Lightning), so the CLI's help text can name the list."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from histoscan.config import TrainConfig, option_name
from histoscan.errors import HistoscanInputError

# The options that may change on --resume: how long, where and with what logging a run goes on, never what it
# learns from or how. epochs: extend (or cap) the run; patience: early stopping only decides when to stop (a
# run stopped early needs a larger one to go on); target_sensitivity, threshold_rule, calibrate, tta: only the
# decision fitted on the validation split after training (threshold, temperature, the views they are scored with);
# num_workers: loading only (every batch is reseeded from seed/epoch/batch, so results do not depend on it);
# accelerator/devices/num_nodes/precision: the machine it continues on ("auto", the default, already means
# "whatever this machine has"); logger: the extra experiment log (metrics.csv is always written).
# Everything else (data, split, model, optimiser, schedule, augmentation, --limit-batches, which sets the
# epoch length the schedule was planned for, ...) is the run's own: a different value needs a new run.
RESUMABLE = (
    "epochs",
    "patience",
    "target_sensitivity",
    "threshold_rule",
    "calibrate",
    "tta",
    "num_workers",
    "accelerator",
    "devices",
    "num_nodes",
    "precision",
    "logger",
)


def resumable_text() -> str:
    """The options that may change on --resume, as the CLI spells them."""
    return ", ".join(option_name(n) for n in RESUMABLE)


def resume_config(saved: TrainConfig, config: TrainConfig, given: Iterable[str] | None = None) -> TrainConfig:
    """The configuration a resumed run continues with.

    Args:
        saved: the run's own RUN/config.yaml.
        config: the caller's configuration; `config.out` is the run folder (however spelled) and is kept.
        given: the fields the caller set (the CLI: options on the command line or in --config FILE); None:
            every field of `config` (a Python caller passing the config the run was created with).

    Returns:
        `saved` with the given fields of :data:`RESUMABLE` taken from `config`; every other field is the run's.

    Raises:
        HistoscanInputError: a given field outside :data:`RESUMABLE` differs from the run's value (one message
            naming both values of each, and the options that may change).
    """
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "out"]
    if given is not None:
        chosen = set(given)
        names = [n for n in names if n in chosen]
    conflicts = [
        n for n in names if n not in RESUMABLE and not _same(n, getattr(config, n), getattr(saved, n))
    ]
    if conflicts:
        parts = [
            f"{_given(n, getattr(config, n))}: this run was trained with {n} {_show(getattr(saved, n))}"
            for n in conflicts
        ]
        raise HistoscanInputError(
            "; ".join(parts) + f" (options that may change on --resume: {resumable_text()}; "
            "train a new run, another --out, to change the others)"
        )
    changes = {n: getattr(config, n) for n in names if n in RESUMABLE}
    return dataclasses.replace(saved, out=config.out or saved.out, **changes)


def changed(saved: TrainConfig, config: TrainConfig) -> bool:
    """Whether `config` (from :func:`resume_config`) changes a recorded setting (`out` aside)."""
    return any(getattr(saved, n) != getattr(config, n) for n in RESUMABLE)


def _same(name: str, a: Any, b: Any) -> bool:
    if a == b:
        return True
    if name == "data" and a and b:  # the same folder/file spelled another way (relative, ~, symlink)
        return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    return False


def _show(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return "a fitted stain normaliser"
    return str(value)


def _given(name: str, value: Any) -> str:
    """The option as the user gave it: `--lr 0.01`, `--balanced`."""
    opt = option_name(name)
    if isinstance(value, bool):
        return opt if value else f"{opt} false"
    if isinstance(value, dict):
        return f"{opt} (another normaliser)"
    return f"{opt} {_show(value)}"
