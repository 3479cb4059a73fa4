"""`histoscan slide RUN_OR_CKPT SLIDE --out DIR`: whole-slide tumour heatmap, overlay, tiles and regions."""

from __future__ import annotations

import argparse
from pathlib import Path

from histoscan.slide.tiles import OUTPUTS, SlideOptions  # light: numpy and PIL, no torch or scipy

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
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=run)


def add_slide_options(p: argparse.ArgumentParser, threads_flag: str = "--workers") -> None:
    """The options of `histoscan slide` that `histoscan slides` shares: mapping (SlideOptions), model
    backend/device, and --no-progress. `threads_flag` names the tile-reading threads option (dest
    `tile_workers`)."""
    p.add_argument(
        "--mpp",
        type=float,
        default=_D.mpp,
        help="the SLIDE's level-0 µm/px, overriding its metadata (required when the slide records none); "
        "the patch µm/px comes from the model",
    )
    p.add_argument(
        "--model-mpp",
        type=float,
        default=_D.model_mpp,
        help="µm/px of the training patches when the run records none (PCam: 0.972)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=_D.stride,
        help="tile step in model pixels (default: half the tile size); below the tile size the tiles overlap "
        "and each heatmap cell (one per step) is the mean of the tiles covering it; the tile size (e.g. 96) "
        "classifies 4x fewer tiles",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=_D.smooth,
        metavar="SIGMA",
        help=f"Gaussian smoothing of the heatmap's logits over the tissue, sigma in tile widths (0: off; "
        f"{_D.smooth:g})",
    )
    p.add_argument(
        "--threshold", type=float, default=_D.threshold, help="tumour threshold (default: the run's)"
    )
    p.add_argument("--batch-size", type=int, default=_D.batch_size, help=f"tiles per batch ({_D.batch_size})")
    p.add_argument(
        "--level", type=int, default=_D.level, help="pyramid level to read (default: best for the mpp)"
    )
    p.add_argument(
        "--min-tissue",
        type=float,
        default=_D.min_tissue,
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
        threads_flag,
        dest="tile_workers",
        type=int,
        metavar="N",
        default=_D.workers,
        help=f"tile-reading threads per slide ({_D.workers})",
    )
    p.add_argument(
        "--explain",
        type=int,
        default=_D.explain,
        metavar="K",
        help="Grad-CAM of the top-K tumour tiles (of the K most probable tiles, marked below-threshold, when "
        "no tile reaches the threshold)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(threads_flag=threads_flag)


def slide_options(args: argparse.Namespace, force: bool = False) -> SlideOptions:
    """SlideOptions from the options `add_slide_options` declared, checked (one-line errors, exit 2)."""
    from histoscan.errors import HistoscanInputError

    for flag, value in (("--batch-size", args.batch_size), (args.threads_flag, args.tile_workers)):
        if value < 1:
            raise HistoscanInputError(f"{flag} {value}: must be at least 1")
    if not 0 <= args.min_tissue <= 1:
        raise HistoscanInputError(f"--min-tissue {args.min_tissue}: must be between 0 and 1")
    if args.smooth < 0:
        raise HistoscanInputError(f"--smooth {args.smooth}: must be 0 (off) or more")
    if args.explain < 0:
        raise HistoscanInputError(f"--explain {args.explain}: must be 0 or more")
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
        workers=args.tile_workers,
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
    print(f"wrote {', '.join(OUTPUTS)} to {args.out}")
    print(
        f"next: open {Path(args.out) / 'overlay.png'}, or import {Path(args.out) / 'regions.geojson'} into QuPath"
    )
    return 0
