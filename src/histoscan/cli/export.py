"""`histoscan export RUN_OR_CKPT --out model.onnx`: ONNX export, parity-checked against PyTorch."""

from __future__ import annotations

import argparse

from histoscan.ranges import number


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (parity-checked)",
        description=(
            "Export to ONNX with preprocessing in the graph: input 'images' uint8 N x S x S x 3 RGB, outputs "
            "'logits' and 'probabilities'. The file is written only if ONNX Runtime reproduces the PyTorch "
            "logits within 1e-4 on real patches of the run's training data (random ones when it is gone)."
        ),
    )
    p.add_argument("model", metavar="RUN_OR_CKPT", help="run folder or checkpoint")
    p.add_argument("--out", required=True, metavar="FILE", help="destination .onnx file")
    p.add_argument(  # the ceiling is the installed onnx's newest opset, checked by the export
        "--opset",
        **number(int, low=11),
        default=17,
        help="ONNX opset (default 17; at most the installed onnx's)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and print the parity figure and the metadata that travel with the model."""
    from histoscan.export.onnx import export_onnx, read_metadata

    path = export_onnx(args.model, args.out, opset=args.opset, force=args.force)
    meta = read_metadata(path)
    print(f"exported {path} ({meta['model']}, {meta['image_size']} px, opset {meta['opset']})")
    diff, on = meta["parity_max_abs_logit_diff"], meta["parity_images"]
    print(f"parity: max |Δlogit| = {diff} on {on} (ONNX Runtime vs PyTorch)")
    print(f"threshold {meta['threshold']}, mpp {meta['mpp'] or 'unknown'}, fit {meta['fit']}")
    return 0
