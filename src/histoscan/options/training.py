"""What `train`, `cv` and `tune` add to :class:`histoscan.config.TrainConfig` (which holds every training
option and is what RUN/config.yaml saves): the --config file, the run folder's handling, and the folds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.ranges import Options, field_range, opt


def parse_folds(text: Any, option: str = "--use-folds") -> list[int] | None:
    """`--use-folds K,K,...` as fold numbers (None stays None, a list is kept); a clear error for anything else."""
    if text is None or isinstance(text, list):
        return text
    try:
        return [int(k) for k in str(text).split(",") if k.strip()]
    except ValueError:
        raise HistoscanInputError(f"{option} {text}: give fold numbers such as 0 or 0,1") from None


@dataclass(kw_only=True)
class RunOptions(Options):
    """How `train` treats its run folder, and where its options may come from besides the command line."""

    config: str | None = opt(
        None,
        "YAML of options as in RUN/config.yaml or a tune's best.yaml; options given here override it",
        metavar="FILE",
    )
    force: bool = opt(False, "replace an existing run folder")
    resume: bool = opt(
        False,
        "continue the run in --out from checkpoints/last.ckpt with its own settings (RUN/config.yaml; --data "
        "may be left out): an option not given keeps the run's value, and one given must equal it, except "
        "these, which may change (and are recorded)",
    )  # `histoscan train` appends the list (histoscan.training.resume.resumable_text)


@dataclass(kw_only=True)
class CvOptions(Options):
    """`histoscan cv`: the folds of a grouped k-fold cross-validation."""

    folds: int = opt(5, "number of grouped folds", bounds=field_range(TrainConfig, "folds"))
    use_folds: list[int] | None = opt(
        None,
        "run only these folds of the split (0-based, e.g. 0 or 0,1): a cheaper screen whose pooled figures "
        "cover those folds' patches only (default: all)",
        metavar="K,K,...",
    )
    resume: bool = opt(False, "keep the folds already trained and evaluated in --out")

    def __post_init__(self) -> None:
        self.use_folds = parse_folds(self.use_folds)
        super().__post_init__()


@dataclass(kw_only=True)
class TuneOptions(Options):
    """`histoscan tune`: the study and the folds each trial scores."""

    trials: int = opt(20, "finished trials the study should hold", kind=int, low=1, high=100_000)
    folds: int = opt(5, "grouped folds of the split", bounds=field_range(TrainConfig, "folds"))
    use_folds: list[int] = opt(
        help="folds each trial trains and scores (default 0)", factory=lambda: [0], metavar="K,K",
        show_default=False,
    )  # fmt: skip
    params: list[str] | None = opt(None, "comma list of the searched fields (default: all)", metavar="NAMES")
    timeout: float | None = opt(
        None, "start no new trial after S seconds", kind=float, low=0, low_open=True, metavar="S"
    )

    def __post_init__(self) -> None:
        self.use_folds = parse_folds(self.use_folds)
        if isinstance(self.params, str):
            self.params = [p.strip() for p in self.params.split(",") if p.strip()] or None
        super().__post_init__()
