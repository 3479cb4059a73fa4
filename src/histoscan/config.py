"""Run configuration: one dataclass, saved as RUN/config.yaml and read back unchanged."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from histoscan.errors import HistoscanInputError

Fit = Literal["pad", "resize"]


@dataclass
class TrainConfig:
    """Everything that defines a training run. Every default lives here and only here."""

    data: str = ""
    out: str = ""
    model: str = "simple-cnn"
    image_size: int | None = None  # None: the source's native size (96 for PCam/HCD, modal size otherwise)
    fit: Fit = "pad"  # how images of another size are fitted: reflect-pad/centre-crop, or resize
    mpp: float | None = None  # patch resolution in µm/px (PCam 0.972, idc-breast ~4.0); None: from the source
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1.5e-4  # docs/results.md: 1e-3 and 3e-4 (with heavier augmentation) were less stable on idc-breast
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = 1e-4
    dropout: float = 0.5
    seed: int = 42
    patience: int = 5
    monitor: Literal["val_auc", "val_loss"] = "val_auc"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    folds: int | None = None  # cross-validation: the test split is fold `fold` of `folds` grouped folds
    fold: int | None = None
    balanced: bool = False  # class-balanced sampling of the training split
    target_sensitivity: float | None = None  # threshold rule on the validation split: None = Youden's J
    # D4 only by default: affine/colour/HED jitter (available via --augment) lowered validation AUC on idc-breast
    augment: list[str] = field(default_factory=lambda: ["d4"])
    freeze_epochs: int = 0  # epochs with the trunk frozen before fine-tuning (resnet50-head recipe)
    weights: str | None = None  # local state dict in torchvision key layout
    limit_batches: int | None = None
    num_workers: int = 0
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    stain: dict[str, Any] | None = None  # fitted stain normaliser (method + parameters), see histoscan.stain
    skip_bad: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise HistoscanInputError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: Path) -> None:
        """Write as YAML."""
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a config.yaml written by :meth:`save`."""
        if not path.is_file():
            raise HistoscanInputError(f"{path}: config.yaml not found")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise HistoscanInputError(f"{path}: not valid YAML ({e})") from None
        return cls.from_dict(d)
