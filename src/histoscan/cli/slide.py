"""`histoscan slide RUN_OR_CKPT SLIDE --out DIR`: whole-slide tumour heatmap, overlay, tiles and regions."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoscan.folders import SlideDir
from histoscan.ranges import field_option
from histoscan.slide.tiles import SlideOptions  # light: numpy and PIL, no torch or scipy

_D = SlideOptions()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `slide` subcommand."""
    p = subparsers.add_parser(
        "slide",
        help="whole-slide tumour map",
        description="Tile a whole slide at the model's patch resolution (µm/px), classify the tissue tiles "
        "and write heatmap.npy/.png, overlay.png, tiles.csv, regions.geojson (QuPath) and summary.json.",
    )
    p.add_argument("run", metavar="MODEL", help="run folder, checkpoint or .onnx export")
    p.add_argument(
        "slide", metavar="SLIDE", help="slide file (.svs/.ndpi/.mrxs/.tif... via OpenSlide, or TIFF)"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (must be empty unless --force)")
    add_slide_options(p)
    p.add_argument(  # the old name of --read-threads (`--workers` means parallel slide workers, as in `slides`)
        "--workers", **field_option(SlideOptions, "read_threads"), dest="read_threads",
        deprecated_for="--read-threads", help=argparse.SUPPRESS,
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=run)


def add_slide_options(p: argparse.ArgumentParser) -> None:
    """The options of `histoscan slide` that `histoscan slides` shares: mapping (SlideOptions, whose fields
    declare each range), model backend/device, --read-threads and --no-progress."""
    p.add_argument(
        "--mpp",
        **field_option(SlideOptions, "mpp"),
        help="the SLIDE's level-0 µm/px, overriding its metadata (required when the slide records none); "
        "the patch µm/px comes from the model",
    )
    p.add_argument(
        "--model-mpp",
        **field_option(SlideOptions, "model_mpp"),
        help="µm/px of the training patches when the run records none (PCam: 0.972)",
    )
    p.add_argument(
        "--stride",
        **field_option(SlideOptions, "stride"),
        help="tile step in model pixels, at most the tile size (default: half the tile size); below the tile "
        "size the tiles overlap and each heatmap cell (one per step) is the mean of the tiles covering it; the "
        "tile size (e.g. 96) classifies 4x fewer tiles",
    )
    p.add_argument(
        "--smooth",
        **field_option(SlideOptions, "smooth"),
        metavar="SIGMA",
        help=f"Gaussian smoothing of the heatmap's logits over the tissue, sigma in tile widths (0: off; "
        f"{_D.smooth:g})",
    )
    p.add_argument(
        "--threshold", **field_option(SlideOptions, "threshold"), help="tumour threshold (default: the run's)"
    )
    p.add_argument(
        "--batch-size", **field_option(SlideOptions, "batch_size"), help=f"tiles per batch ({_D.batch_size})"
    )
    p.add_argument(
        "--level",
        **field_option(SlideOptions, "level"),
        help="pyramid level to read (default: best for the mpp)",
    )
    p.add_argument(
        "--min-tissue",
        **field_option(SlideOptions, "min_tissue"),
        help=f"tissue fraction to classify a tile ({_D.min_tissue})",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="auto (from MODEL), torch, or onnx (RUN/model.onnx for a run folder)",
    )
    p.add_argument("--onnx", type=Path, default=None, help="run this ONNX export instead of MODEL's weights")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda[:N]")
    p.add_argument(
        "--reader", choices=["auto", "openslide", "tifffile"], default=_D.reader, help="slide reader (auto)"
    )
    p.add_argument(
        "--read-threads",
        **field_option(SlideOptions, "read_threads"),
        metavar="N",
        help=f"tile-reading threads per slide ({_D.read_threads})",
    )
    p.add_argument(
        "--explain",
        **field_option(SlideOptions, "explain"),
        metavar="K",
        help="Grad-CAM of the top-K tumour tiles (of the K most probable tiles, marked below-threshold, when "
        "no tile reaches the threshold)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def slide_options(args: argparse.Namespace, force: bool = False) -> SlideOptions:
    """SlideOptions from the options `add_slide_options` declared (ranges were checked as they were parsed)."""
    from histoscan.errors import HistoscanInputError

    if args.onnx is not None and not args.onnx.is_file():
        raise HistoscanInputError(f"--onnx {args.onnx}: file not found")
    return SlideOptions(
        mpp=args.mpp,
        model_mpp=args.model_mpp,
        stride=args.stride,
        smooth=args.smooth,
        threshold=args.threshold,
        batch_size=args.batch_size,
        level=args.level,
        min_tissue=args.min_tissue,
        explain=args.explain,
        force=force,
        read_threads=args.read_threads,
        reader=args.reader,
    )


def run(args: argparse.Namespace) -> int:
    """Map one slide; print where the outputs are and the headline numbers."""
    from histoscan.inference.predictor import load_predictor
    from histoscan.slide.mapping import map_slide

    opts = slide_options(args, force=args.force)
    predictor = load_predictor(args.onnx or args.run, "onnx" if args.onnx else args.backend, args.device)
    s = map_slide(predictor, args.slide, args.out, opts, progress=not args.no_progress, echo=print)
    print(
        f"{Path(args.slide).name}: {s['n_tissue_tiles']} tissue tiles of {s['n_tiles']} "
        f"(level {s['level']}, {s['tile_size_level0']:.0f} px at level 0), {s['n_tumour_tiles']} above "
        f"{s['threshold']:.3f} in {s['n_regions']} regions ({s['tumour_area_mm2']:.3f} of "
        f"{s['tissue_area_mm2']:.2f} mm² tissue), {s['seconds']:.1f} s"
    )
    for line in s["warnings"]:
        print(f"warning: {line}")
    for note in s["notes"]:
        print(f"note: {note}")
    out = SlideDir(args.out)
    print(f"wrote {', '.join(SlideDir.OUTPUTS)} to {args.out}")
    print(f"next: open {out.overlay}, or import {out.regions} into QuPath")
    return 0
