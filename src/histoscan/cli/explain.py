"""`histoscan explain RUN_OR_CKPT IMAGE... --out DIR`: Grad-CAM overlays and probabilities for patches."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=run)


def _image_files(items: list[str]) -> list[Path]:
    from histoscan.data.images import is_image_file
    from histoscan.errors import HistoscanInputError

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and is_image_file(f))
            if not found:
                raise HistoscanInputError(f"{p}: folder has no PNG/TIFF/JPEG images")
            files += found
        else:
            files.append(p)  # decode_image names a missing or unreadable file
    return files


def _unique_ids(files: list[Path]) -> list[str]:
    """File stems, with the parent folder prepended where stems repeat."""
    stems = [f.stem for f in files]
    return [f"{f.parent.name}_{f.stem}" if stems.count(f.stem) > 1 else f.stem for f in files]


def run(args: argparse.Namespace) -> int:
    """Decode and fit the images, explain them, print where the overlays went."""
    import numpy as np
    import torch

    from histoscan.data.images import decode_image, fit_image
    from histoscan.explain.gradcam import explain_images
    from histoscan.inference.predictor import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(args.model, device)
    files = _image_files(args.images)
    images = np.stack(
        [fit_image(decode_image(f, str(f))[0], loaded.image_size, loaded.config.fit) for f in files]
    )
    paths = explain_images(loaded, images, _unique_ids(files), args.out, target_layer=args.target_layer)
    print(
        f"explained {len(paths)} image(s) with {loaded.model_name}; overlays, probabilities.csv in {args.out}"
    )
    return 0
