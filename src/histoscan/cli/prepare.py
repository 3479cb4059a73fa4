"""`histoscan prepare`: decode a source once into a packed patch store and print a summary."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from histoscan.ranges import number

if TYPE_CHECKING:
    from histoscan.data.store import PatchStore


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `prepare` subcommand."""
    p = sub.add_parser(
        "prepare",
        help="decode a dataset once into a packed store (images.npy + index.csv + meta.json)",
        description="Decode PCam HDF5, Kaggle HCD, a manifest CSV, class or image folders into STORE.",
    )
    p.add_argument(
        "data", metavar="DATA", help="source folder or file (format detected), or a STORE to re-pack"
    )
    p.add_argument("--out", required=True, metavar="STORE", help="store folder to write")
    p.add_argument(
        "--image-size",
        **number(int, low=8, high=4096),
        metavar="S",
        help="patch side in px (default: 96 for PCam/HCD, else the most common size in the data)",
    )
    p.add_argument(
        "--fit",
        choices=["pad", "resize"],
        default="pad",
        help="images of another size: reflect-pad/centre-crop (default) or bilinear resize",
    )
    p.add_argument(
        "--part",
        choices=["auto", "labelled", "unlabelled"],
        default="auto",
        help="Kaggle HCD: train/ (labelled) or test/ (unlabelled); auto: labelled when present",
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable or missing images (counted in meta.json)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing STORE")
    p.set_defaults(func=run)


def summary(store: PatchStore) -> str:
    """A few lines describing a prepared store."""
    from histoscan.folders import StoreDir

    m = store.meta
    counts = ", ".join(f"{k}: {v}" for k, v in m.get("counts", {}).items())
    gb = store.images.nbytes / 1e9
    lines = [
        f"prepared {len(store)} patches {store.size}x{store.size} ({m.get('format')}, part {m.get('part')}) "
        f"-> {store.path} [{gb:.2f} GB, {m.get('seconds')} s]",
        f"  classes {counts}; groups {m.get('n_groups', 0)}; mpp {m.get('mpp')}; fit {m.get('fit')}",
    ]
    if m.get("splits"):
        lines.append("  splits " + ", ".join(f"{k}: {v}" for k, v in m["splits"].items()))
    if m.get("notes"):
        lines.append("  converted " + ", ".join(f"{k}: {v}" for k, v in sorted(m["notes"].items())))
    if m.get("n_fitted"):
        lines.append(
            f"  fitted {m['n_fitted']} image(s) of another size to {store.size}x{store.size} (--fit {m.get('fit')}); "
            f"listed in {StoreDir.FITTED}"
        )
    if m.get("n_skipped"):
        first = m["skipped"][0]
        lines.append(
            f"  skipped {m['n_skipped']} unreadable (first: {first['reason']}); listed in {StoreDir.SKIPPED}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Prepare the store and print its summary."""
    from histoscan.data.store import prepare  # lazy: numpy, tqdm, PIL and the source readers

    store = prepare(
        args.data,
        args.out,
        image_size=args.image_size,
        fit=args.fit,
        skip_bad=args.skip_bad,
        force=args.force,
        part=args.part,
    )
    print(summary(store))
    return 0
