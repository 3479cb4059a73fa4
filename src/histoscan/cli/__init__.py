"""`histoscan` command line: parses arguments, calls one stage, prints; user errors exit 2 with one line.

Each subcommand lives in its own module here with `register(subparsers)` adding the parser and setting
`func=run`, where `run(args) -> int` calls a stage function and prints the outcome.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator

from histoscan import __version__
from histoscan.errors import HistoscanInputError

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
    "stain",
    "export",
    "serve",
    "bench",
]


VERBOSE_HELP = "log progress details (-v) or debug output (-vv); before or after the command"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand whose module is present."""
    parser = _Parser(
        prog="histoscan", description="Tumour detection in H&E histopathology patches and slides."
    )
    parser.add_argument("--version", action="version", version=f"histoscan {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"histoscan.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"histoscan.cli.{name}":
                continue
            raise
        module.register(sub)
    for _, command in iter_commands(parser):  # global options work after the subcommand too
        command.add_argument(
            "-v",
            "--verbose",
            action="count",
            dest="verbose_after",
            default=argparse.SUPPRESS,
            help=VERBOSE_HELP,
        )
    return parser


def iter_commands(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) of every (sub)command under `parser`, e.g. ("stain fit", its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield f"{path} {name}".strip(), command
                yield from iter_commands(command, f"{path} {name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `histoscan` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # WARNING by default: a command prints its own start/summary lines, and a user error stays one line
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no Tip banners
    try:
        return int(args.func(args) or 0)
    except HistoscanInputError as e:
        print(f"histoscan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: 128 + SIGINT, and what was kept (histoscan.errors.Interrupted)
        detail = f": {e}" if str(e) else ""
        print(f"histoscan {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
