"""`histoscan slides MODEL INPUT --out DIR`: tumour maps for a cohort of slides, resumable, local or on Ray."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.slide import CohortOptions, EngineOptions
from histoscan.slide.tiles import SlideOptions

EXIT_SOME_FAILED = 3


def register(subparsers: Any) -> None:
    """Add the `slides` subcommand: :class:`CohortOptions`, :class:`SlideOptions` and :class:`EngineOptions`."""
    p = add_command(
        subparsers,
        "slides",
        run,
        help="tumour maps for a cohort of slides (resumable; local or Ray)",
        description="Map every slide of INPUT (a folder of .svs/.tif/.tiff/.ndpi/.mrxs/.scn/.bif/.svslide, or "
        "a CSV with a path column and optional mpp and id columns) as `histoscan slide` does, into DIR/<id>/, "
        "with DIR/cohort.csv (one row per slide) and DIR/index.html. A CSV's mpp wins over --mpp, which "
        "applies to every other slide. An existing DIR is resumed: slides already done with the same model "
        "and settings are skipped, failed and unfinished ones redone. Exit codes: 0 all slides ok, 3 some "
        "slides failed (cohort.csv says why), 2 bad input, 130 Ctrl-C.",
    )
    add_options(p, CohortOptions)
    add_options(p, SlideOptions)
    add_options(p.add_argument_group("engine"), EngineOptions)


def run(args: argparse.Namespace) -> int:
    """Map the cohort; one line per slide, a summary line, exit 3 when any slide failed."""
    from histoscan.folders import CohortDir, SlideDir
    from histoscan.slide.cohort import run_cohort

    o = build(CohortOptions, args)
    opts = build(SlideOptions, args, force=False)  # --force here redoes slides (run_cohort's force)
    engine = build(EngineOptions, args)
    skipped = []

    def show(row: dict) -> None:
        if row["skipped"]:
            skipped.append(row["id"])
        elif row["status"] == "ok":
            n = len(row.get("warnings") or [])
            warn = f"; {n} warning{'s' if n > 1 else ''} in {SlideDir(row['id']).summary_path}" if n else ""
            scored = ""
            if row.get("truth_dice") is not None:
                auc = row["truth_tile_auc"]
                scored = f", tile AUC {'n/a' if auc is None else f'{auc:.3f}'}, Dice {row['truth_dice']:.3f}"
            print(
                f"{row['id']}: ok, tumour {row['tumour_mm2']:.3f} mm²{scored}, {row['seconds']:.1f} s{warn}",
                flush=True,
            )
        else:
            print(f"{row['id']}: failed, {row['error']}", flush=True)

    model, backend = o.source
    r = run_cohort(
        model,
        o.input,
        o.out,
        opts,
        engine=engine.engine,
        backend=backend,
        device=o.device,
        force=o.force,
        workers=engine.workers,
        cpus_per_worker=engine.cpus_per_worker,
        gpus_per_worker=engine.gpus_per_worker,
        ray_address=engine.ray_address,
        progress=not o.no_progress and engine.engine == "local",
        on_result=show,
        truth=o.truth,
    )
    cohort = CohortDir(o.out)
    if skipped:
        print(f"{len(skipped)} slides already done with {r.model_id}: skipped (--force redoes them)")
    rate = (
        f", {r.mapped / r.seconds * 3600:.0f} slides/h, {r.tiles / r.seconds:.0f} tiles/s" if r.tiles else ""
    )
    print(
        f"{len(r.rows)} slides: {r.n_ok} ok, {r.n_failed} failed ({r.mapped} mapped by this run, {r.skipped} "
        f"skipped) in {r.seconds:.1f} s on {r.workers} {r.engine} worker{'s' if r.workers > 1 else ''}"
        f"{rate}; wrote {cohort.csv_path} and {cohort.index_path}"
    )
    if r.froc is not None and r.froc["score"] is not None:
        levels = ", ".join(f"{v:.2f}" for k, v in r.froc.items() if k.startswith("sens_at"))
        print(
            f"FROC {r.froc['score']:.3f} over {r.froc['slides']} scored slides ({r.froc['lesions']} lesions; "
            f"sensitivity at 1/4, 1/2, 1, 2, 4, 8 false positives per slide: {levels})"
        )
    if r.n_failed:
        print(
            f"histoscan slides: {r.n_failed} of {len(r.rows)} slides failed (see {cohort.csv_path}); "
            "rerun the same command to retry them",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return 0
