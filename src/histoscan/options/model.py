"""Which model, where it runs, and how patches are scored: options shared by every command that runs a model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.ranges import Options, field_range, opt

DEVICE_HELP = (
    "where the model runs: auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N; for an ONNX "
    "model the matching ONNX Runtime execution provider"
)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_opt() -> Any:
    """The --device field: the one declaration every command that runs a model uses."""
    return opt("auto", DEVICE_HELP)


def check_device(device: Any) -> None:
    """Raise one line naming --device unless it is auto, cpu, cuda or cuda:N."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise HistoscanInputError(f"--device {device}: choose auto, cpu, cuda or cuda:N")


@dataclass(kw_only=True)
class ModelOptions(Options):
    """The model a command runs and the device it runs on."""

    model: str = opt(help="run folder, checkpoint or .onnx export", positional=True, metavar="MODEL")
    device: str = device_opt()

    def check(self) -> None:
        check_device(self.device)


@dataclass(kw_only=True)
class BackendOptions(ModelOptions):
    """A model that may run in PyTorch or ONNX Runtime."""

    backend: Literal["auto", "torch", "onnx"] = opt(
        "auto",
        "auto (from MODEL: .onnx -> ONNX Runtime, run folder or checkpoint -> PyTorch), torch, or onnx "
        "(RUN/model.onnx for a run folder)",
        choices=("auto", "torch", "onnx"),
    )


@dataclass(kw_only=True)
class ScoringOptions(BackendOptions):
    """Scoring patches in batches (evaluate, predict)."""

    tta: int | None = opt(
        None,
        "test-time augmentation: 4 rotations or 8 dihedral views, logits averaged (--tta alone = 8; default: "
        "the TTA the run was trained to be scored with, its config's tta)",
        kind=int,
        choices=(0, 4, 8),
        nargs="?",
        const=8,
    )
    batch_size: int = opt(
        256, "patches per forward pass, before TTA views", kind=int, low=1, high=65_536, metavar="B"
    )
    skip_bad: bool = opt(False, "skip unreadable images (counted and listed)")
    force: bool = opt(False, "overwrite existing output")


@dataclass(kw_only=True)
class EvaluateOptions(ScoringOptions):
    """`histoscan evaluate`."""

    data: str = opt(help="labelled source (PCam, Kaggle HCD, manifest, folders) or STORE", required=True)
    out: str | None = opt(None, "output folder (default RUN/eval-<data name>/)", metavar="DIR")
    target_sensitivity: float | None = opt(
        None,
        "re-choose the threshold on the run's validation split to reach sensitivity S",
        bounds=field_range(TrainConfig, "target_sensitivity"),
        metavar="S",
    )
    n_boot: int = opt(1000, "bootstrap resamples for the CIs (0: none)", kind=int, low=0, high=1_000_000)


@dataclass(kw_only=True)
class PredictOptions(ScoringOptions):
    """`histoscan predict`."""

    data: str = opt(help="image folder, Kaggle HCD test layout, PCam, manifest or STORE", required=True)
    out: str = opt(help="CSV file to write", metavar="FILE", required=True)
    format: Literal["csv", "kaggle"] = opt(
        "csv",
        "csv: id,probability,label (label at the run's threshold); kaggle: id,label with label = tumour "
        "probability, in sample_submission.csv order",
        choices=("csv", "kaggle"),
    )


@dataclass(kw_only=True)
class ExplainOptions(ModelOptions):
    """`histoscan explain` (Grad-CAM needs the PyTorch model: no backend choice)."""

    model: str = opt(help="run folder or checkpoint", positional=True, metavar="RUN_OR_CKPT")
    images: list[str] = opt(
        help="PNG/TIFF/JPEG patches, or folders of them", positional=True, metavar="IMAGE", nargs="+"
    )
    out: str = opt(help="output folder", metavar="DIR", required=True)
    target_layer: str | None = opt(
        None, "network layer to explain (default: last conv stage)", metavar="NAME"
    )
    force: bool = opt(False, "write into a non-empty --out folder (replacing it)")


@dataclass(kw_only=True)
class ExportOptions(Options):
    """`histoscan export` (runs the model only for the parity check, on the CPU)."""

    model: str = opt(help="run folder or checkpoint", positional=True, metavar="RUN_OR_CKPT")
    out: str = opt(help="destination .onnx file", metavar="FILE", required=True)
    # the ceiling is the installed onnx's newest opset, checked by the export
    opset: int = opt(17, "ONNX opset (at most the installed onnx's)", kind=int, low=11)
    force: bool = opt(False, "overwrite an existing --out file")
