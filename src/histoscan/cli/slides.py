"""`histoscan slides MODEL INPUT --out DIR`: tumour maps for a cohort of slides, resumable, local or on Ray."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histoscan.cli.slide import add_slide_options, slide_options
from histoscan.ranges import number

EXIT_SOME_FAILED = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `slides` subcommand."""
    p = subparsers.add_parser(
        "slides",
        help="tumour maps for a cohort of slides (resumable; local or Ray)",
        description="Map every slide of INPUT (a folder of .svs/.tif/.tiff/.ndpi/.mrxs/.scn/.bif/.svslide, or "
        "a CSV with a path column and optional mpp and id columns) as `histoscan slide` does, into DIR/<id>/, "
        "with DIR/cohort.csv (one row per slide) and DIR/index.html. A CSV's mpp wins over --mpp, which "
        "applies to every other slide. An existing DIR is resumed: slides already done with the same model "
        "and settings are skipped, failed and unfinished ones redone. Exit codes: 0 all slides ok, 3 some "
        "slides failed (cohort.csv says why), 2 bad input, 130 Ctrl-C.",
    )
    p.add_argument("run", metavar="MODEL", help="run folder, checkpoint or .onnx export")
    p.add_argument("input", metavar="INPUT", type=Path, help="folder of slides, or CSV with path[,mpp,id]")
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="cohort folder (an earlier one is resumed)"
    )
    add_slide_options(p)
    p.add_argument(
        "--force", action="store_true", help="remap every slide (default: skip slides already done)"
    )
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: one slide after another in this process; ray: workers on a Ray cluster "
        "(pip install 'histoscan[cluster]')",
    )
    g.add_argument(
        "--workers",
        **number(int, low=1, high=4096),
        metavar="N",
        default=None,
        help="parallel slide workers on Ray, each loading the model once (default: the cluster's CPUs / "
        "--cpus-per-worker)",
    )
    g.add_argument(
        "--cpus-per-worker",
        **number(float, low=0, low_open=True, high=1024),
        metavar="C",
        default=1.0,
        help="CPUs per Ray worker (1)",
    )
    g.add_argument(
        "--gpus-per-worker",
        **number(float, low=0, high=64),
        metavar="G",
        default=0.0,
        help="GPUs per Ray worker (0)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="join this Ray cluster (e.g. auto, ray://head:10001); default: start a local Ray and stop it after",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Map the cohort; one line per slide, a summary line, exit 3 when any slide failed."""
    from histoscan.errors import HistoscanInputError
    from histoscan.folders import CohortDir, SlideDir
    from histoscan.slide.cohort import run_cohort

    opts = slide_options(args)
    if args.engine == "local" and (args.ray_address or args.gpus_per_worker or args.workers not in (None, 1)):
        raise HistoscanInputError("--workers/--gpus-per-worker/--ray-address need --engine ray")
    skipped = []

    def show(row: dict) -> None:
        if row["skipped"]:
            skipped.append(row["id"])
        elif row["status"] == "ok":
            n = len(row.get("warnings") or [])
            warn = f"; {n} warning{'s' if n > 1 else ''} in {SlideDir(row['id']).summary_path}" if n else ""
            print(
                f"{row['id']}: ok, tumour {row['tumour_mm2']:.3f} mm², {row['seconds']:.1f} s{warn}",
                flush=True,
            )
        else:
            print(f"{row['id']}: failed, {row['error']}", flush=True)

    r = run_cohort(
        args.onnx or args.run,
        args.input,
        args.out,
        opts,
        engine=args.engine,
        backend="onnx" if args.onnx else args.backend,
        device=args.device,
        force=args.force,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        ray_address=args.ray_address,
        progress=not args.no_progress and args.engine == "local",
        on_result=show,
    )
    cohort = CohortDir(args.out)
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
    if r.n_failed:
        print(
            f"histoscan slides: {r.n_failed} of {len(r.rows)} slides failed (see {cohort.csv_path}); "
            "rerun the same command to retry them",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return 0
