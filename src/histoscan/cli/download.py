"""`histoscan download pcam --out DIR`: fetch, verify and decompress the official PCam files."""

from __future__ import annotations

import argparse

from histoscan.data.download import DEFAULT_URL, SPLITS, URL_ENV, download_pcam
from histoscan.ranges import number


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `download` subcommand."""
    p = subparsers.add_parser(
        "download",
        help="download a public dataset (PCam) with checksums and resume",
        description="Fetch the PCam .h5.gz files (Zenodo record 2546921), resume partial downloads, verify "
        "md5s and decompress to DIR/<name>.h5. Files put in DIR by hand (.h5.gz or .h5) are checked instead.",
    )
    p.add_argument("dataset", choices=["pcam"], help="dataset to fetch")
    p.add_argument("--out", required=True, metavar="DIR", help="destination folder")
    p.add_argument("--split", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits (default: all)")
    p.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help=f"URL template with {{name}} or a folder URL (default ${URL_ENV}, else {DEFAULT_URL})",
    )
    p.add_argument("--no-meta", action="store_true", help="skip the optional *_meta.csv files (slide ids)")
    p.add_argument("--keep-gz", action="store_true", help="keep the .h5.gz files after decompression")
    p.add_argument("--recheck", action="store_true", help="re-hash files verified by an earlier run")
    p.add_argument(
        "--timeout",
        **number(float, low=0, low_open=True, high=86_400),
        default=10.0,
        metavar="S",
        help="seconds to wait for a connection or a stalled transfer (default 10)",
    )
    p.add_argument(
        "--retries",
        **number(int, low=0, high=1000),
        default=3,
        metavar="N",
        help="automatic resumes of a transfer that breaks off (default 3)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Download and print one line per file."""
    results = download_pcam(
        args.out,
        args.split,
        base_url=args.base_url,
        meta=not args.no_meta,
        keep_gz=args.keep_gz,
        recheck=args.recheck,
        timeout=args.timeout,
        retries=args.retries,
    )
    for r in results:
        print(f"{r.action:>12}  {r.path}")
    print(f"PCam ({', '.join(args.split)}) ready in {args.out}")
    return 0
