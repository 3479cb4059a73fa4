"""Options of `histoscan stain fit` and `histoscan stain apply`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from histoscan.ranges import Options, opt


@dataclass(kw_only=True)
class StainFitOptions(Options):
    """Fit a Macenko/Reinhard reference on patches."""

    images: list[str] = opt(
        help="reference patches or folders of them", positional=True, metavar="IMAGE_OR_DIR", nargs="+"
    )
    method: Literal["macenko", "reinhard"] = opt("macenko", "stain method", choices=("macenko", "reinhard"))
    out: str = opt(help="output file, e.g. stain.json", required=True)
    force: bool = opt(False, "overwrite an existing --out file")
    max_images: int = opt(500, "fit on a seeded sample of this many", kind=int, low=1, high=10_000_000)
    seed: int = opt(0, "sampling seed", kind=int, low=0, high=2**32 - 1)


@dataclass(kw_only=True)
class StainApplyOptions(Options):
    """Write stain-normalised copies of patches."""

    images: list[str] = opt(
        help="patches or folders of them", positional=True, metavar="IMAGE_OR_DIR", nargs="+"
    )
    stain: str = opt(help="parameters from `histoscan stain fit`", required=True)
    out: str = opt(help="output folder (written in full or not at all)", required=True)
    force: bool = opt(False, "replace a non-empty --out folder")
