"""`histoscan explain RUN_OR_CKPT IMAGE... --out DIR`: Grad-CAM overlays and probabilities for patches."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.model import ExplainOptions


def register(sub: Any) -> None:
    """Add the `explain` subcommand (options: :class:`histoscan.options.model.ExplainOptions`)."""
    p = add_command(
        sub,
        "explain",
        run,
        help="Grad-CAM heat maps for patch images",
        description=(
            "Explain the predicted class of each image with Grad-CAM: writes DIR/<id>_gradcam.png (patch and "
            "overlay side by side), DIR/probabilities.csv (id,probability,label) and DIR/gradcam.npz (raw "
            "maps)."
        ),
    )
    add_options(p, ExplainOptions)


def run(args: argparse.Namespace) -> int:
    """Explain the images into --out (all or nothing) and print where the overlays went."""
    from histoscan.data.images import collect_images
    from histoscan.explain.gradcam import explain_files
    from histoscan.folders import ExplainDir

    o = build(ExplainOptions, args)
    paths, predictor, warnings = explain_files(
        o.model, collect_images(o.images), o.out, o.target_layer, o.device, o.force
    )
    for line in warnings:
        print(f"warning: {line}")
    print(
        f"explained {len(paths)} image(s) with {predictor.card.model}; overlays, {ExplainDir.PROBABILITIES} "
        f"in {o.out}"
    )
    return 0
