"""`histoscan export RUN_OR_CKPT --out model.onnx`: ONNX export, parity-checked against PyTorch."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.model import ExportOptions


def register(sub: Any) -> None:
    """Add the `export` subcommand (options: :class:`histoscan.options.model.ExportOptions`)."""
    p = add_command(
        sub,
        "export",
        run,
        help="export a model to ONNX (parity-checked)",
        description=(
            "Export to ONNX with preprocessing in the graph: input 'images' uint8 N x S x S x 3 RGB, outputs "
            "'logits' and 'probabilities'. The file is written only if ONNX Runtime reproduces the PyTorch "
            "logits within 1e-4 on real patches of the run's training data (random ones when it is gone)."
        ),
    )
    add_options(p, ExportOptions)


def run(args: argparse.Namespace) -> int:
    """Export and print the parity figure and the metadata that travel with the model."""
    from histoscan.export.onnx import export_onnx, read_metadata

    o = build(ExportOptions, args)
    path = export_onnx(o.model, o.out, opset=o.opset, force=o.force)
    meta = read_metadata(path)
    print(f"exported {path} ({meta['model']}, {meta['image_size']} px, opset {meta['opset']})")
    diff, on = meta["parity_max_abs_logit_diff"], meta["parity_images"]
    print(f"parity: max |Δlogit| = {diff} on {on} (ONNX Runtime vs PyTorch)")
    print(f"threshold {meta['threshold']}, mpp {meta['mpp'] or 'unknown'}, fit {meta['fit']}")
    return 0
