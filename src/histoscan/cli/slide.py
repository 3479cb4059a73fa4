"""`histoscan slide RUN_OR_CKPT SLIDE --out DIR`: whole-slide tumour heatmap, overlay, tiles and regions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.folders import SlideDir
from histoscan.options.slide import SlideCommandOptions
from histoscan.ranges import RangeAction, field_range
from histoscan.slide.tiles import SlideOptions  # light: numpy and PIL, no torch or scipy


def register(subparsers: Any) -> None:
    """Add the `slide` subcommand: :class:`SlideCommandOptions` (model, slide, output) and :class:`SlideOptions`
    (the mapping)."""
    p = add_command(
        subparsers,
        "slide",
        run,
        help="whole-slide tumour map",
        description="Tile a whole slide at the model's patch resolution (µm/px), classify the tissue tiles "
        "and write heatmap.npy/.png, overlay.png, tiles.csv, regions.geojson (QuPath) and summary.json.",
    )
    add_options(p, SlideCommandOptions)
    add_options(p, SlideOptions)
    p.add_argument(  # the old name of --read-threads (`--workers` means parallel slide workers, as in `slides`)
        "--workers", action=RangeAction, bounds=field_range(SlideOptions, "read_threads"), default=None,
        dest="read_threads", deprecated_for="--read-threads", help=argparse.SUPPRESS,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Map one slide; print where the outputs are and the headline numbers."""
    from histoscan.inference.predictor import load_predictor
    from histoscan.slide.mapping import map_slide

    o = build(SlideCommandOptions, args)
    opts = build(SlideOptions, args, force=o.force)
    predictor = load_predictor(*o.source, o.device)
    s = map_slide(predictor, o.slide, o.out, opts, progress=not o.no_progress, echo=print, truth=o.truth)
    print(
        f"{Path(o.slide).name}: {s['n_tissue_tiles']} tissue tiles of {s['n_tiles']} "
        f"(level {s['level']}, {s['tile_size_level0']:.0f} px at level 0), {s['n_tumour_tiles']} above "
        f"{s['threshold']:.3f} in {s['n_regions']} regions ({s['tumour_area_mm2']:.3f} of "
        f"{s['tissue_area_mm2']:.2f} mm² tissue), {s['seconds']:.1f} s"
    )
    if s.get("truth"):
        t = s["truth"]
        auc = "n/a" if t["tile_auc"] is None else f"{t['tile_auc']:.3f}"
        froc = "n/a" if t["froc"] is None else f"{t['froc']:.3f}"
        print(f"truth: tile AUC {auc}, Dice {t['dice']:.3f} at the threshold, {t['lesions']} lesion(s), FROC {froc} "
              f"({SlideDir(o.out).truth_path})")  # fmt: skip
    for line in s["warnings"]:
        print(f"warning: {line}")
    for note in s["notes"]:
        print(f"note: {note}")
    out = SlideDir(o.out)
    print(f"wrote {', '.join(SlideDir.OUTPUTS)} to {o.out}")
    print(f"next: open {out.overlay}, or import {out.regions} into QuPath")
    return 0
