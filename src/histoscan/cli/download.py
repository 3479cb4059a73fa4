"""`histoscan download pcam --out DIR`: fetch, verify and decompress the official PCam files."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_options, build
from histoscan.cli.parsing import add_command
from histoscan.data.download import download_pcam
from histoscan.options.data import DownloadOptions


def register(subparsers: Any) -> None:
    """Add the `download` subcommand (options: :class:`histoscan.options.data.DownloadOptions`)."""
    p = add_command(
        subparsers,
        "download",
        run,
        help="download a public dataset (PCam) with checksums and resume",
        description="Fetch the PCam .h5.gz files (Zenodo record 2546921), resume partial downloads, verify "
        "md5s and decompress to DIR/<name>.h5. Files put in DIR by hand (.h5.gz or .h5) are checked instead.",
    )
    add_options(p, DownloadOptions)


def run(args: argparse.Namespace) -> int:
    """Download and print one line per file."""
    o = build(DownloadOptions, args)
    results = download_pcam(
        o.out,
        o.split,
        base_url=o.base_url,
        meta=not o.no_meta,
        keep_gz=o.keep_gz,
        recheck=o.recheck,
        timeout=o.timeout,
        retries=o.retries,
    )
    for r in results:
        print(f"{r.action:>12}  {r.path}")
    print(f"PCam ({', '.join(o.split)}) ready in {o.out}")
    return 0
