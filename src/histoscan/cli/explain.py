"""`histoscan explain RUN_OR_CKPT IMAGE... --out DIR`: Grad-CAM overlays and probabilities for patches."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `explain` subcommand."""
    p = sub.add_parser(
        "explain",
        help="Grad-CAM heat maps for patch images",
        description=(
            "Explain the predicted class of each image with Grad-CAM: writes DIR/<id>_gradcam.png (patch and "
            "overlay side by side), DIR/probabilities.csv (id,probability,label) and DIR/gradcam.npz (raw "
            "maps)."
        ),
    )
    p.add_argument("model", metavar="RUN_OR_CKPT", help="run folder or checkpoint")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="PNG/TIFF/JPEG patches, or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--target-layer", metavar="NAME", help="network layer to explain (default: last conv stage)"
    )
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA when available), cpu, cuda[:N]")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder (replacing it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain the images into --out (all or nothing) and print where the overlays went."""
    from histoscan.data.images import collect_images
    from histoscan.explain.gradcam import explain_files
    from histoscan.folders import ExplainDir

    paths, predictor, warnings = explain_files(
        args.model, collect_images(args.images), args.out, args.target_layer, args.device, args.force
    )
    for line in warnings:
        print(f"warning: {line}")
    print(
        f"explained {len(paths)} image(s) with {predictor.card.model}; overlays, {ExplainDir.PROBABILITIES} "
        f"in {args.out}"
    )
    return 0
