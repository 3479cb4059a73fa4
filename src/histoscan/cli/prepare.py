"""`histoscan prepare`: decode a source once into a packed patch store and print a summary."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.data import PrepareOptions

if TYPE_CHECKING:
    from histoscan.data.store import PatchStore


def register(sub: Any) -> None:
    """Add the `prepare` subcommand (options: :class:`histoscan.options.data.PrepareOptions`)."""
    p = add_command(
        sub,
        "prepare",
        run,
        help="decode a dataset once into a packed store (images.npy + index.csv + meta.json)",
        description="Decode PCam HDF5, Kaggle HCD, a manifest CSV, class or image folders into STORE.",
    )
    add_options(p, PrepareOptions)


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

    o = build(PrepareOptions, args)
    store = prepare(
        o.data, o.out, image_size=o.image_size, fit=o.fit, skip_bad=o.skip_bad, force=o.force, part=o.part
    )
    print(summary(store))
    return 0
