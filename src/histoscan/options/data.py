"""Options of the data commands: `prepare`, `download` and `bench`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from histoscan.data.download import DEFAULT_URL, SPLITS, URL_ENV  # light: stdlib and tqdm
from histoscan.ranges import Options, opt


@dataclass(kw_only=True)
class PrepareOptions(Options):
    """`histoscan prepare`: decode a source once into a packed store."""

    data: str = opt(
        help="source folder or file (format detected), or a STORE to re-pack", positional=True, metavar="DATA"
    )
    out: str = opt(help="store folder to write", metavar="STORE", required=True)
    image_size: int | None = opt(
        None,
        "patch side in px (default: 96 for PCam/HCD, else the most common size in the data)",
        kind=int, low=8, high=4096, metavar="S",
    )  # fmt: skip
    fit: Literal["pad", "resize"] = opt(
        "pad", "images of another size: reflect-pad/centre-crop or bilinear resize", choices=("pad", "resize")
    )
    part: Literal["auto", "labelled", "unlabelled"] = opt(
        "auto",
        "Kaggle HCD: train/ (labelled) or test/ (unlabelled); auto: labelled when present",
        choices=("auto", "labelled", "unlabelled"),
    )
    skip_bad: bool = opt(False, "skip unreadable or missing images (counted in meta.json)")
    force: bool = opt(False, "overwrite an existing STORE")


@dataclass(kw_only=True)
class DownloadOptions(Options):
    """`histoscan download pcam`: fetch, verify and decompress the PCam files."""

    dataset: Literal["pcam"] = opt(help="dataset to fetch", positional=True, choices=("pcam",))
    out: str = opt(help="destination folder", metavar="DIR", required=True)
    split: list[str] = opt(
        help="splits (default: all)", factory=lambda: list(SPLITS), choices=SPLITS, nargs="+",
        show_default=False,
    )  # fmt: skip
    base_url: str | None = opt(
        None,
        f"URL template with {{name}} or a folder URL (default ${URL_ENV}, else {DEFAULT_URL})",
        metavar="URL",
    )
    no_meta: bool = opt(False, "skip the optional *_meta.csv files (slide ids)")
    keep_gz: bool = opt(False, "keep the .h5.gz files after decompression")
    recheck: bool = opt(False, "re-hash files verified by an earlier run")
    timeout: float = opt(
        10.0, "seconds to wait for a connection or a stalled transfer",
        kind=float, low=0, low_open=True, high=86_400, metavar="S",
    )  # fmt: skip
    retries: int = opt(
        3, "automatic resumes of a transfer that breaks off", kind=int, low=0, high=1000, metavar="N"
    )


@dataclass(kw_only=True)
class BenchOptions(Options):
    """`histoscan bench`: input-pipeline and training throughput."""

    data: str = opt(help="labelled source or STORE (e.g. ../shared/data/idc-breast)", required=True)
    image_size: int = opt(96, "patch side in px", kind=int, low=8, high=4096)
    batch_size: int = opt(64, "patches per batch", kind=int, low=1, high=65_536)
    batches: int = opt(30, "timed batches for the input pipeline", kind=int, low=1, high=100_000)
    train_batches: int = opt(5, "timed training steps per model and pipeline", kind=int, low=0, high=100_000)
    models: str = opt("simple-cnn,resnet50", "comma list ('' skips training)")
    workers: int | None = opt(
        None, "DataLoader workers of the seed-style loader (default: cores)", kind=int, low=0, high=256
    )
    json: str | None = opt(None, "also write the figures to this JSON file")
