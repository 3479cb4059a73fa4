"""`histoscan stain fit|apply`: fit a Macenko/Reinhard reference on patches, or write normalised copies."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command, subcommands
from histoscan.options.stain import StainApplyOptions, StainFitOptions


def register(subparsers: Any) -> None:
    """Add `stain fit` (:class:`StainFitOptions`) and `stain apply` (:class:`StainApplyOptions`)."""
    p = add_command(
        subparsers,
        "stain",
        None,
        help="fit / apply stain normalisation (Macenko, Reinhard)",
        description="Fit a stain normaliser on reference patches; `histoscan train --stain FILE` then "
        "applies it in training, evaluation, prediction, slides and serving.",
    )
    sub = subcommands(p, "stain_command")
    f = add_command(
        sub, "fit", fit, help="fit on reference patches, write the parameters (JSON, or YAML by suffix)"
    )
    add_options(f, StainFitOptions)
    a = add_command(
        sub, "apply", apply, help="write stain-normalised PNG copies of patches (to inspect a fit)"
    )
    add_options(a, StainApplyOptions)


def fit(args: argparse.Namespace) -> int:
    """Fit and print the parameters."""
    import numpy as np

    from histoscan.stain.files import fit_files

    o = build(StainFitOptions, args)
    cfg, n, out = fit_files(o.images, o.out, o.method, o.max_images, o.seed, o.force)
    params = {k: v for k, v in cfg.items() if k in ("stain_matrix", "max_concentrations", "mean", "std")}
    print(f"{o.method} fitted on {n} images ({cfg['reference']['n_tissue_pixels']} tissue pixels)")
    for k, v in params.items():
        print(f"  {k}: {np.round(np.asarray(v), 4).tolist()}")
    print(f"wrote {out}  (use: histoscan train --stain {out} ...)")
    return 0


def apply(args: argparse.Namespace) -> int:
    """Write the normalised copies and print how many."""
    from histoscan.stain.files import apply_files

    o = build(StainApplyOptions, args)
    n, skipped = apply_files(o.images, o.stain, o.out, o.force)
    print(f"wrote {n} normalised images to {o.out} ({skipped} with too little tissue, unchanged)")
    return 0
