"""Run configuration: one validated dataclass, saved as RUN/config.yaml and read back unchanged.

Every default, range, choice and help text of a training option lives in the field's declaration below; the
CLI builds its options from them (:func:`add_config_options`), and the same checks run when a config is built
from Python or read from a file (:meth:`TrainConfig.validate`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from histoscan.errors import HistoscanInputError
from histoscan.ranges import Range, RangeAction, option_name

Fit = Literal["pad", "resize"]
AUGMENT_OPS = ("d4", "affine", "color", "hed")


def _opt(
    default: Any = None,
    help: str = "",
    *,
    type: type | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[str, ...] | None = None,
    cli: bool = True,
    metavar: str | None = None,
    factory: Any = None,
) -> Any:
    """A config field with its CLI help and its allowed range (`low`/`high`; `*_open`: bound excluded)."""
    bounds = None if type is None else Range(type, low, high, low_open, high_open)
    meta = dict(help=help, type=type, range=bounds, choices=choices, cli=cli, metavar=metavar)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Every default lives here and only here."""

    data: str = _opt("", "labelled source (PCam, Kaggle HCD, manifest CSV, folders) or STORE", cli=False)
    out: str = _opt("", "run folder to create", cli=False)
    model: str = _opt(
        "simple-cnn",
        "model id: simple-cnn, resnet50-head, resnet18, resnet34, resnet50, resnet18-small, resnet10-small, "
        "p4m-cnn, timm:<name> or torchvision:<name>",
    )
    image_size: int | None = _opt(
        None, "patch size in px (default: the source's native size)", type=int, low=8, high=4096
    )
    fit: Fit = _opt(
        "pad", "fit images of another size: reflect-pad/centre-crop or resize", choices=("pad", "resize")
    )
    mpp: float | None = _opt(
        None,
        "patch resolution in µm/px (default: from the source; PCam 0.972)",
        type=float,
        low=0,
        low_open=True,
    )
    # the defaults are the recipe measured best in docs/results.md (paired CV on hcd-train and idc-breast)
    epochs: int = _opt(8, "maximum epochs", type=int, low=1, high=100_000)
    batch_size: int = _opt(64, "patches per training step", type=int, low=1, high=65_536)
    # one-cycle at 1e-3 beat the seed's constant 1.5e-4 on both sets; 1e-3 with a plateau schedule and heavy
    # augmentation was unstable on idc-breast (docs/results.md)
    lr: float = _opt(1e-3, "learning rate", type=float, low=0, high=10, low_open=True)
    optimizer: Literal["adam", "adamw"] = _opt("adamw", "optimizer", choices=("adam", "adamw"))
    weight_decay: float = _opt(1e-4, "weight decay", type=float, low=0, high=1)
    dropout: float = _opt(0.5, "dropout before the last layer", type=float, low=0, high=1, high_open=True)
    seed: int = _opt(42, "random seed (split, initialisation, augmentation)", type=int, low=0, high=2**32 - 1)
    patience: int = _opt(3, "early-stopping patience in epochs", type=int, low=0, high=100_000)
    monitor: Literal["val_auc", "val_loss"] = _opt(
        "val_auc", "early-stopping / best-checkpoint metric", choices=("val_auc", "val_loss")
    )
    val_fraction: float = _opt(
        0.15, "validation share", type=float, low=0, high=1, low_open=True, high_open=True
    )
    test_fraction: float = _opt(0.15, "held-out test share", type=float, low=0, high=1, high_open=True)
    # cross-validation: the test split is fold `fold` of `folds` grouped folds (set by `histoscan cv`)
    folds: int | None = _opt(None, "grouped folds", type=int, low=2, high=100, cli=False)
    fold: int | None = _opt(None, "this run's test fold", type=int, low=0, cli=False)
    balanced: bool = _opt(False, "class-balanced sampling of the training split")
    target_sensitivity: float | None = _opt(
        None,
        "choose the decision threshold for this sensitivity on the validation split (default: Youden's J)",
        type=float,
        low=0,
        high=1,
        low_open=True,
    )
    # Decision settings: fixed at training time (calibration and threshold are fitted on the validation split),
    # recorded in the run, and applied by evaluate / predict / slide / slides / serve and the ONNX export.
    threshold_rule: Literal["youden", "sensitivity", "0.5"] = _opt(
        "youden",
        "decision threshold rule on the (calibrated) validation probabilities: Youden's J, the most specific "
        "threshold reaching --target-sensitivity, or 0.5 (default youden; --target-sensitivity alone implies "
        "sensitivity)",
        choices=("youden", "sensitivity", "0.5"),
    )
    calibrate: Literal["temperature", "none"] = _opt(
        "temperature",
        "probability calibration fitted on the validation split after training: temperature scaling (one "
        "scalar T, p = sigmoid(logit / T); the ranking is unchanged) or none",
        choices=("temperature", "none"),
    )
    tta: int = _opt(
        0,
        "test-time augmentation views the run is scored with (0 off, 4 rotations, 8 dihedral views): used for "
        "the threshold and calibration, and by evaluate / predict when they are not given --tta",
        type=int,
        low=0,
        high=8,
        choices=(0, 4, 8),
        metavar="{0,4,8}",
    )
    # D4 only by default: affine/colour/HED jitter lowered validation AUC on idc-breast (docs/results.md)
    augment: list[str] = _opt(
        help=f"comma list of {','.join(AUGMENT_OPS)} or 'none'", factory=lambda: ["d4"], metavar="OPS"
    )
    schedule: Literal["plateau", "cosine", "onecycle"] = _opt(
        "onecycle", "learning-rate schedule: one-cycle (warm-up, then annealing), cosine decay, or halve on a "
        "validation plateau",
        choices=("plateau", "cosine", "onecycle"),
    )  # fmt: skip
    warmup_epochs: float | None = _opt(
        None,
        "linear warm-up of the learning rate, in epochs (cosine and onecycle; default 1 with those, none with "
        "plateau)",
        type=float,
        low=0,
        high=1000,
    )
    label_smoothing: float = _opt(
        0.0, "label smoothing: targets eps/2 and 1-eps/2", type=float, low=0, high=0.5, high_open=True
    )
    mixup: float = _opt(0.0, "mixup Beta(a, a) parameter a (0: off)", type=float, low=0, high=10)
    cutmix: float = _opt(0.0, "cutmix Beta(a, a) parameter a (0: off; with mixup, one of the two per batch)",
                         type=float, low=0, high=10)  # fmt: skip
    ema: float = _opt(
        0.0, "exponential moving average of the weights, decay per step (0: off; e.g. 0.999)",
        type=float, low=0, high=1, high_open=True,
    )  # fmt: skip
    precise_bn: int = _opt(
        0, "before each validation, re-estimate BatchNorm statistics on N clean (unaugmented) training batches",
        type=int, low=0, high=100_000, metavar="N",
    )  # fmt: skip
    freeze_epochs: int = _opt(
        0, "epochs with the trunk frozen before fine-tuning (resnet50-head)", type=int, low=0, high=100_000
    )
    weights: str | None = _opt(
        None, "local state dict (torchvision key layout) to start from", metavar="FILE"
    )
    limit_batches: int | None = _opt(
        None, "at most N train and N val batches per epoch (smoke runs)", type=int, low=1, metavar="N"
    )
    num_workers: int = _opt(0, "data-loader workers", type=int, low=0, high=256)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = _opt(
        "auto", "numeric precision (auto: bf16/fp16 mixed on GPUs, fp32 on CPU)",
        choices=("auto", "32", "bf16-mixed", "16-mixed"),
    )  # fmt: skip
    accelerator: Literal["auto", "cpu", "gpu"] = _opt(
        "auto", "where to train (auto: every visible GPU, else the CPU)", choices=("auto", "cpu", "gpu")
    )
    devices: int | None = _opt(
        None, "processes per node (default: all GPUs, or 1 on the CPU); more than 1 runs Lightning DDP",
        type=int, low=1, high=1024, metavar="N",
    )  # fmt: skip
    num_nodes: int = _opt(
        1, "machines in a multi-node DDP run (torchrun / SLURM)", type=int, low=1, high=4096
    )
    logger: Literal["csv", "tensorboard", "mlflow"] = _opt(
        "csv", "experiment log besides RUN/metrics.csv: csv (only that), tensorboard (RUN/logs), mlflow (RUN/mlruns)",
        choices=("csv", "tensorboard", "mlflow"),
    )  # fmt: skip
    stain: dict[str, Any] | None = _opt(
        None, "stain normaliser JSON from `histoscan stain fit`", metavar="FILE"
    )  # the CLI takes a file; the config holds the fitted parameters
    skip_bad: bool = _opt(False, "skip unreadable images (counted in the store's meta.json)")

    def __post_init__(self) -> None:
        if self.target_sensitivity is not None and self.threshold_rule == "youden":
            self.threshold_rule = "sensitivity"  # --target-sensitivity alone names the rule (as before 2026-12)
        if self.warmup_epochs is None:  # resolved here, so config.yaml records the warm-up that was used
            self.warmup_epochs = 0.0 if self.schedule == "plateau" else 1.0
        self.validate()

    def validate(self) -> None:
        """Check every field against its declared type, range and choices; raise naming the option."""
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        if self.val_fraction + self.test_fraction >= 1:
            raise HistoscanInputError(
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction}: must sum to less than 1"
            )
        if self.fold is not None and (self.folds is None or self.fold >= self.folds):
            raise HistoscanInputError(f"--fold {self.fold}: must be in 0..{(self.folds or 1) - 1}")
        bad = [a for a in self.augment if a not in AUGMENT_OPS]
        if bad:
            raise HistoscanInputError(
                f"--augment {','.join(self.augment)}: unknown op {bad[0]} (choose from {', '.join(AUGMENT_OPS)})"
            )
        if self.threshold_rule == "sensitivity" and self.target_sensitivity is None:
            raise HistoscanInputError("--threshold-rule sensitivity: needs --target-sensitivity")
        if self.warmup_epochs and self.schedule == "plateau":
            raise HistoscanInputError(
                f"--warmup-epochs {self.warmup_epochs}: needs --schedule cosine or onecycle"
            )
        if self.stain is not None and not isinstance(self.stain, dict):
            raise HistoscanInputError(
                "stain: must be a fitted normaliser (a mapping), see `histoscan stain fit`"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> TrainConfig:
        """Build from a dict, rejecting unknown keys and bad values with a clear message (naming `source`)."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise HistoscanInputError(f"{where or 'config: '}not a mapping of option names to values")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise HistoscanInputError(f"{where or 'config: '}unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**d)
        except HistoscanInputError as e:
            raise HistoscanInputError(f"{where}{e}") from None

    def save(self, path: Path) -> None:
        """Write as YAML (atomically)."""
        from histoscan.utils.fs import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a config.yaml written by :meth:`save` (or by hand: the same names and checks)."""
        path = Path(path)
        if not path.is_file():
            raise HistoscanInputError(f"{path}: config file not found")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise HistoscanInputError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        return cls.from_dict(d, source=str(path))


def _check_field(f: dataclasses.Field, value: Any) -> None:
    meta, opt = f.metadata, option_name(f.name)
    if value is None:
        if f.default is not None and f.default is not dataclasses.MISSING:
            raise HistoscanInputError(f"{opt}: a value is required")
        return
    if meta.get("range") is not None:
        meta["range"].check(opt, value)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise HistoscanInputError(f"{opt} {value}: choose from {', '.join(map(str, choices))}")
    if f.type in ("bool",) and not isinstance(value, bool):
        raise HistoscanInputError(f"{opt} {value!r}: must be true or false")


def _default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        d = f.default_factory()  # type: ignore[misc]
        return ",".join(d) if isinstance(d, list) else str(d)
    return "" if f.default is None else str(f.default)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add one option per CLI-visible TrainConfig field; help, choices and defaults come from the field.

    Every option defaults to None ("not given"), so :func:`config_from_options` can tell what the user set; a
    numeric option is checked against its field's range as it is parsed (exit 2 naming the option).
    """
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        default = _default_text(f)
        text = meta["help"] + (f" (default {default})" if default and f.type != "bool" else "")
        if f.type == "bool":
            parser.add_argument(option_name(f.name), action="store_true", default=None, help=meta["help"])
            continue
        kwargs: dict[str, Any] = dict(default=None, help=text.replace("%", "%%"))
        if meta.get("range") is not None:  # checked as it is parsed: a bad value stops before anything runs
            kwargs.update(action=RangeAction, bounds=meta["range"])
        if meta.get("choices") and meta.get("range") is None:  # numeric choices: the range action parses the
            kwargs["choices"] = meta["choices"]  # number, TrainConfig's validation then names the choices
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(option_name(f.name), **kwargs)


def config_from_options(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from `base` (default: the defaults) with every option the user gave (not None) replaced.

    `augment` may be a comma list string ("none" = no augmentation); `stain` a path to a fitted normaliser is
    left to the caller (it needs the stain module).
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    if isinstance(given.get("augment"), str):
        text = given["augment"].strip()
        given["augment"] = [] if text in ("none", "") else [a.strip() for a in text.split(",") if a.strip()]
    merged = {**(base.to_dict() if base is not None else {}), **given}
    return TrainConfig.from_dict(merged)
