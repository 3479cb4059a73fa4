"""`histoscan predict`: tumour probabilities for unlabelled patches (CSV or Kaggle submission)."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.model import PredictOptions


def register(sub: Any) -> None:
    """Add the `predict` subcommand (options: :class:`histoscan.options.model.PredictOptions`)."""
    p = add_command(
        sub,
        "predict",
        run,
        help="probabilities for unlabelled patches (CSV or Kaggle submission)",
        description="Predict tumour probabilities for every patch of DATA.",
    )
    add_options(p, PredictOptions)


def run(args: argparse.Namespace) -> int:
    """Predict and print a one-line summary."""
    from histoscan.inference.predict import predict  # lazy: `histoscan --help` stays fast (torch, matplotlib)

    o = build(PredictOptions, args)
    s = predict(
        o.model,
        o.data,
        o.out,
        fmt=o.format,
        tta=o.tta,
        batch_size=o.batch_size,
        backend=o.backend,
        skip_bad=o.skip_bad,
        force=o.force,
        device=o.device,
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
