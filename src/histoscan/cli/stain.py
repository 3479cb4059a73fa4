"""`histoscan stain fit|apply`: fit a Macenko/Reinhard reference on patches, or write normalised copies."""

from __future__ import annotations

import argparse

from histoscan.ranges import number
from histoscan.utils.fs import guard_output, staged_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `stain fit` and `stain apply`."""
    p = subparsers.add_parser(
        "stain",
        help="fit / apply stain normalisation (Macenko, Reinhard)",
        description="Fit a stain normaliser on reference patches; `histoscan train --stain FILE` then "
        "applies it in training, evaluation, prediction, slides and serving.",
    )
    sub = p.add_subparsers(dest="stain_command", required=True, parser_class=type(p))
    f = sub.add_parser("fit", help="fit on reference patches, write the parameters (JSON, or YAML by suffix)")
    f.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="reference patches or folders of them")
    f.add_argument("--method", choices=["macenko", "reinhard"], default="macenko", help="default macenko")
    f.add_argument("--out", required=True, help="output file, e.g. stain.json")
    f.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    f.add_argument(
        "--max-images",
        **number(int, low=1, high=10_000_000),
        default=500,
        help="fit on a seeded sample of this many (default 500)",
    )
    f.add_argument(
        "--seed", **number(int, low=0, high=2**32 - 1), default=0, help="sampling seed (default 0)"
    )
    f.set_defaults(func=run)
    a = sub.add_parser("apply", help="write stain-normalised PNG copies of patches (to inspect a fit)")
    a.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    a.add_argument("--stain", required=True, help="parameters from `histoscan stain fit`")
    a.add_argument("--out", required=True, help="output folder (written in full or not at all)")
    a.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    a.set_defaults(func=run)


def _fit(args: argparse.Namespace) -> int:
    import numpy as np

    from histoscan.data.images import collect_images, decode_image
    from histoscan.stain import fit_stain, save_stain

    files = collect_images(args.images, recursive=True)
    guard_output(args.out, args.force, "file")
    if len(files) > args.max_images:
        pick = np.random.default_rng(args.seed).choice(len(files), args.max_images, replace=False)
        files = [files[i] for i in sorted(pick)]
    cfg = fit_stain([decode_image(f, str(f))[0] for f in files], args.method)
    cfg["reference"]["sources"] = list(args.images)
    out = save_stain(cfg, args.out, force=args.force)
    params = {k: v for k, v in cfg.items() if k in ("stain_matrix", "max_concentrations", "mean", "std")}
    print(
        f"{args.method} fitted on {len(files)} images ({cfg['reference']['n_tissue_pixels']} tissue pixels)"
    )
    for k, v in params.items():
        print(f"  {k}: {np.round(np.asarray(v), 4).tolist()}")
    print(f"wrote {out}  (use: histoscan train --stain {out} ...)")
    return 0


def _apply(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from histoscan.data.images import collect_images, decode_image
    from histoscan.stain import load_stain, normaliser_from_config

    norm = normaliser_from_config(load_stain(args.stain))
    files = collect_images(args.images, recursive=True)
    guard_output(args.out, args.force, "folder")
    with staged_folder(args.out, args.force) as out, torch.inference_mode():
        for i in range(0, len(files), 256):  # batches of same-sized images through the batched normaliser
            chunk = files[i : i + 256]
            imgs = [decode_image(f, str(f))[0] for f in chunk]
            for shape in sorted({im.shape for im in imgs}):
                idx = [j for j, im in enumerate(imgs) if im.shape == shape]
                x = torch.from_numpy(np.stack([imgs[j] for j in idx])).permute(0, 3, 1, 2).float() / 255.0
                y = (norm(x).permute(0, 2, 3, 1) * 255.0).round().byte().numpy()
                for j, im in zip(idx, y, strict=True):
                    Image.fromarray(im).save(out / f"{chunk[j].stem}.png")
    print(
        f"wrote {len(files)} normalised images to {args.out} ({norm.n_skipped} with too little tissue, unchanged)"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch `stain fit` / `stain apply`."""
    return _fit(args) if args.stain_command == "fit" else _apply(args)
