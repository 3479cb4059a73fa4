"""What `slide` and `slides` add to the mapping options (:class:`histoscan.slide.tiles.SlideOptions`): the
model and where it runs, the input and output, and for a cohort the engine that spreads slides over workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from histoscan.errors import HistoscanInputError
from histoscan.options.model import BackendOptions
from histoscan.ranges import Options, opt


@dataclass(kw_only=True)
class SlideModelOptions(BackendOptions):
    """The model of a slide map: MODEL (or an ONNX export of it), its backend and device."""

    onnx: str | None = opt(None, "run this ONNX export instead of MODEL's weights", metavar="FILE")
    no_progress: bool = opt(False, "no progress bar")

    def check(self) -> None:
        super().check()
        if self.onnx is not None and not Path(self.onnx).is_file():
            raise HistoscanInputError(f"--onnx {self.onnx}: file not found")

    @property
    def source(self) -> tuple[str, str]:
        """(model path, backend) to load: the --onnx export when given."""
        return (self.onnx, "onnx") if self.onnx else (self.model, self.backend)


@dataclass(kw_only=True)
class SlideCommandOptions(SlideModelOptions):
    """`histoscan slide`: one slide into one folder."""

    slide: str = opt(
        help="slide file (.svs/.ndpi/.mrxs/.tif... via OpenSlide, or TIFF)", positional=True, metavar="SLIDE"
    )
    out: str = opt(help="output folder (must be empty unless --force)", required=True)
    force: bool = opt(False, "write into a non-empty --out folder")


@dataclass(kw_only=True)
class CohortOptions(SlideModelOptions):
    """`histoscan slides`: a cohort into one folder, resumable."""

    input: str = opt(help="folder of slides, or CSV with path[,mpp,id]", positional=True, metavar="INPUT")
    out: str = opt(help="cohort folder (an earlier one is resumed)", metavar="DIR", required=True)
    force: bool = opt(False, "remap every slide (default: skip slides already done)")


@dataclass(kw_only=True)
class EngineOptions(Options):
    """Where the slides of a cohort are mapped: this process, or workers on a Ray cluster."""

    engine: Literal["local", "ray"] = opt(
        "local",
        "local: one slide after another in this process; ray: workers on a Ray cluster (pip install "
        "'histoscan[cluster]')",
        choices=("local", "ray"),
    )
    workers: int | None = opt(
        None,
        "parallel slide workers on Ray, each loading the model once (default: the cluster's CPUs / "
        "--cpus-per-worker)",
        kind=int, low=1, high=4096, metavar="N",
    )  # fmt: skip
    cpus_per_worker: float = opt(
        1.0, "CPUs per Ray worker", kind=float, low=0, low_open=True, high=1024, metavar="C"
    )
    gpus_per_worker: float = opt(0.0, "GPUs per Ray worker", kind=float, low=0, high=64, metavar="G")
    ray_address: str | None = opt(
        None,
        "join this Ray cluster (e.g. auto, ray://head:10001); default: start a local Ray and stop it after",
        metavar="ADDRESS",
    )

    def check(self) -> None:
        if self.engine == "local" and (
            self.ray_address or self.gpus_per_worker or self.workers not in (None, 1)
        ):
            raise HistoscanInputError("--workers/--gpus-per-worker/--ray-address need --engine ray")
