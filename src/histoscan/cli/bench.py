"""`histoscan bench`: input-pipeline and training throughput, packed store vs a seed-style loader."""

from __future__ import annotations

import argparse
import json

from histoscan.ranges import number


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
    p = sub.add_parser("bench", help="throughput: packed store + batched augmentation vs seed-style loader")
    p.add_argument("--data", required=True, help="labelled source or STORE (e.g. ../shared/data/idc-breast)")
    p.add_argument("--image-size", **number(int, low=8, high=4096), default=96, help="patch side in px (96)")
    p.add_argument(
        "--batch-size", **number(int, low=1, high=65_536), default=64, help="patches per batch (64)"
    )
    p.add_argument(
        "--batches",
        **number(int, low=1, high=100_000),
        default=30,
        help="timed batches for the input pipeline",
    )
    p.add_argument(
        "--train-batches",
        **number(int, low=0, high=100_000),
        default=5,
        help="timed training steps per model and pipeline",
    )
    p.add_argument("--models", default="simple-cnn,resnet50", help="comma list ('' skips training)")
    p.add_argument(
        "--workers",
        **number(int, low=0, high=256),
        help="DataLoader workers of the seed-style loader (default: cores)",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    from histoscan.bench.pipeline import format_bench, run_bench

    r = run_bench(
        args.data,
        args.image_size,
        args.batch_size,
        args.batches,
        args.train_batches,
        tuple(m for m in args.models.split(",") if m),
        args.workers,
    )
    print(format_bench(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0
