"""`histoscan predict`: tumour probabilities for unlabelled patches (CSV or Kaggle submission)."""

from __future__ import annotations

import argparse

from histoscan.cli.evaluate import add_inference_options


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `predict` subcommand."""
    p = sub.add_parser(
        "predict",
        help="probabilities for unlabelled patches (CSV or Kaggle submission)",
        description="Predict tumour probabilities for every patch of DATA.",
    )
    p.add_argument("run", metavar="MODEL", help="run folder, checkpoint or .onnx export")
    p.add_argument(
        "--data", required=True, help="image folder, Kaggle HCD test layout, PCam, manifest or STORE"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="CSV file to write")
    p.add_argument(
        "--format",
        choices=["csv", "kaggle"],
        default="csv",
        help="csv: id,probability,label (label at the run's threshold); kaggle: id,label with "
        "label = tumour probability, in sample_submission.csv order",
    )
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict and print a one-line summary."""
    from histoscan.inference.predict import predict  # lazy: `histoscan --help` stays fast (torch, matplotlib)

    s = predict(
        args.run,
        args.data,
        args.out,
        fmt=args.format,
        tta=args.tta,
        batch_size=args.batch_size,
        backend=args.backend,
        skip_bad=args.skip_bad,
        force=args.force,
    )
    if s["n_skipped"]:
        listed = ", ".join(f"{k['source']} ({k['reason']})" for k in s["skipped"][:5])
        more = f" and {s['n_skipped'] - 5} more" if s["n_skipped"] > 5 else ""
        print(f"skipped {s['n_skipped']} unreadable image(s): {listed}{more}")
    for line in s["warnings"]:
        print(f"warning: {line}")
    if s.get("fitted_note"):
        print(f"note: {s['fitted_note']}")
    print(
        f"{s['n']} patches -> {s['out']} ({s['format']}); {s['n_positive']} at or above threshold "
        f"{s['threshold']:.3g}; mean probability {s['mean_probability']:.3f}"
    )
    return 0
