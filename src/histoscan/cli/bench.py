"""`histoscan bench`: input-pipeline and training throughput, packed store vs a seed-style loader."""

from __future__ import annotations

import argparse
import json
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.data import BenchOptions


def register(sub: Any) -> None:
    """Add the `bench` subcommand (options: :class:`histoscan.options.data.BenchOptions`)."""
    p = add_command(
        sub, "bench", run, help="throughput: packed store + batched augmentation vs seed-style loader"
    )
    add_options(p, BenchOptions)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    from histoscan.bench.pipeline import format_bench, run_bench

    o = build(BenchOptions, args)
    r = run_bench(
        o.data,
        o.image_size,
        o.batch_size,
        o.batches,
        o.train_batches,
        tuple(m for m in o.models.split(",") if m),
        o.workers,
    )
    print(format_bench(r))
    if o.json:
        with open(o.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0
