"""`histoscan tiles SLIDES --annotations PATH --out STORE`: labelled training tiles from annotated slides."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.slide import TilesCommandOptions, TilesOptions


def register(sub: Any) -> None:
    """Add the `tiles` subcommand: :class:`TilesCommandOptions` and :class:`TilesOptions`."""
    p = add_command(
        sub,
        "tiles",
        run,
        help="labelled tiles from annotated slides (ASAP XML / QuPath GeoJSON) into a patch store",
        description="Tile each slide's tissue at --mpp (PCam's 0.972 µm/px, 96 px by default) and label each "
        "tile from the slide's outlines: Camelyon ASAP XML (level-0 coordinates; groups _0/_1/Tumor/metastases "
        "tumour, _2/Exclusion normal) or QuPath GeoJSON (classification names; --label-map for others). A tile "
        "is tumour when a tumour pixel lies in its central 32 px square (PCam's rule; --label-rule fraction for "
        "an area share). Writes a patch store with group = slide id (train, cv and tune split by slide) and "
        "tiles-by-slide.csv (tiles taken, skipped and warnings per slide). Resumable: slides already cut are "
        "kept when the same command runs again.",
    )
    add_options(p, TilesCommandOptions)
    add_options(p, TilesOptions)


def run(args: argparse.Namespace) -> int:
    """Cut the slides into the store; one line per slide, then a summary."""
    from histoscan.cli.prepare import summary
    from histoscan.folders import StoreDir
    from histoscan.slide.annotated import make_tiles

    o = build(TilesCommandOptions, args)
    opts = build(TilesOptions, args, force=o.force)
    store = make_tiles(o.slides, o.annotations, o.out, opts, progress=not o.no_progress, echo=print)
    print(summary(store))
    print(f"per slide: {StoreDir(store.path).manifest_path}")
    print(f"next: histoscan train --data {store.path} --out runs/from-slides")
    return 0
