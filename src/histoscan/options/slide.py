"""What `slide` and `slides` add to the mapping options (:class:`histoscan.slide.tiles.SlideOptions`): the
model and where it runs, the input and output, and for a cohort the engine that spreads slides over workers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
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
    truth: str | None = opt(
        None,
        "the slide's outlines (ASAP XML or QuPath GeoJSON, level-0 coordinates): score the map against them (tile "
        "AUC, Dice, FROC in truth.json) and draw them on the overlay",
        metavar="FILE",
    )

    def check(self) -> None:
        super().check()
        if self.truth is not None and not Path(self.truth).is_file():
            raise HistoscanInputError(f"--truth {self.truth}: file not found")


@dataclass(kw_only=True)
class CohortOptions(SlideModelOptions):
    """`histoscan slides`: a cohort into one folder, resumable."""

    input: str = opt(help="folder of slides, or CSV with path[,mpp,id]", positional=True, metavar="INPUT")
    out: str = opt(help="cohort folder (an earlier one is resumed)", metavar="DIR", required=True)
    force: bool = opt(False, "remap every slide (default: skip slides already done)")
    truth: str | None = opt(
        None,
        "outlines to score the maps against: a folder of <slide stem>.xml (ASAP) / .geojson (QuPath) files, or "
        "one file for a one-slide cohort; slides without a file are mapped, not scored (per-slide tile AUC, "
        "Dice and FROC in cohort.csv; Camelyon16's FROC over the cohort)",
        metavar="PATH",
    )

    def check(self) -> None:
        super().check()
        if self.truth is not None and not Path(self.truth).exists():
            raise HistoscanInputError(f"--truth {self.truth}: no such file or folder")


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


@dataclass(kw_only=True)
class TilesOptions(Options):
    """How annotated slides are cut into labelled tiles. Every default, range and help of `histoscan tiles`."""

    mpp: float = opt(0.972, "tile µm/px (PCam: 0.972)", kind=float, low=0, low_open=True, high=1000)
    size: int = opt(96, "tile side in px at --mpp (PCam: 96)", kind=int, low=8, high=4096)
    stride: int | None = opt(None, "tile step in px at --mpp (default: the tile size)", kind=int, low=1, high=4096)
    label_rule: str = opt(
        "centre",
        "tumour when any tumour pixel lies in the tile's central --centre px square (PCam's rule), or when at "
        "least --fraction of the tile is tumour",
        choices=("centre", "fraction"),
    )
    centre: int = opt(32, "side of the central square the centre rule looks at, px", kind=int, low=1, high=4096)
    fraction: float = opt(
        0.5, "tumour share of a tile for --label-rule fraction", kind=float, low=0, low_open=True, high=1
    )
    unannotated: str = opt(
        "normal",
        "tissue outside every outline: normal (Camelyon's convention) or skip (partly annotated slides)",
        choices=("normal", "skip"),
    )
    label_map: str | None = opt(
        None,
        "NAME=LABEL,... class names to tumour / normal / ignore, over the defaults (Camelyon _0 _1 _2 Tumor "
        "metastases Exclusion; QuPath Tumor Normal Stroma Other)",
        metavar="MAP",
    )
    min_tissue: float = opt(0.5, "tissue share a tile needs to be taken", kind=float, low=0, high=1)
    slide_mpp: float | None = opt(
        None, "the slides' level-0 µm/px, overriding their metadata", kind=float, low=0, low_open=True, high=1000
    )
    read_threads: int = opt(2, "tile-reading threads", kind=int, low=1, high=256)
    force: bool = opt(False, cli=False)  # set from the command's --force

    def check(self) -> None:
        if self.centre > self.size:
            raise HistoscanInputError(f"--centre {self.centre}: at most the tile size {self.size}")
        from histoscan.slide.annotations import parse_label_map  # lazy: shapely

        parse_label_map(self.label_map)  # a bad map fails before any slide is read

    def key(self) -> str:
        """What decides a slide's tiles (parts made with another key are cut again)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("read_threads", "force")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class TilesCommandOptions(Options):
    """`histoscan tiles`: annotated slides in, a labelled patch store out."""

    slides: list[str] = opt(
        help="slide files (.svs/.ndpi/.mrxs/.tif... via OpenSlide or tiffslide)", positional=True, nargs="+",
        metavar="SLIDE",
    )  # fmt: skip
    annotations: str = opt(
        help="a folder of <slide stem>.xml (ASAP) / .geojson (QuPath) files, or one file for a single slide "
        "(a slide without a file: all tissue normal, or none taken with --unannotated skip)",
        metavar="PATH",
        required=True,
    )
    out: str = opt(help="patch store to write (train, cv and tune accept it; group = slide id)", metavar="STORE",
                   required=True)  # fmt: skip
    force: bool = opt(False, "overwrite an existing STORE")
    no_progress: bool = opt(False, "no progress bar")
