"""`histoscan` command line: parses arguments, calls one stage, prints; user errors exit 2 with one line.

Each subcommand lives in its own module here with `register(subcommands)`, which adds the command's parser
(:func:`histoscan.cli.parsing.add_command`) with the options of its dataclasses (:mod:`histoscan.arguments`),
and `run(args) -> int`, which builds those dataclasses (validated), calls one stage function and prints.
"""

from __future__ import annotations

import importlib
import logging
import sys

from histoscan import __version__
from histoscan.cli.parsing import Parser, add_verbose, iter_commands, subcommands
from histoscan.errors import HistoscanInputError

__all__ = ["COMMANDS", "build_parser", "iter_commands", "main"]

# module name in histoscan.cli for each subcommand, in help order
COMMANDS = [
    "prepare",
    "download",
    "train",
    "cv",
    "tune",
    "evaluate",
    "predict",
    "explain",
    "slide",
    "slides",
    "tiles",
    "stain",
    "export",
    "serve",
    "bench",
]


def build_parser() -> Parser:
    """The full parser, with every subcommand whose module is present."""
    parser = Parser(
        prog="histoscan", description="Tumour detection in H&E histopathology patches and slides."
    )
    parser.flat = True
    parser.add_argument("--version", action="version", version=f"histoscan {__version__}")
    add_verbose(parser, after=False)
    sub = subcommands(parser, "command")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"histoscan.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"histoscan.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `histoscan` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # WARNING by default: a command prints its own start/summary lines, and a user error stays one line
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no Tip banners
    try:
        return int(args.run(args) or 0)
    except HistoscanInputError as e:
        print(f"histoscan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: 128 + SIGINT, and what was kept (histoscan.errors.Interrupted)
        detail = f": {e}" if str(e) else ""
        print(f"histoscan {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
