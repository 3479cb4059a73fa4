"""The parser of `histoscan`: jsonargparse's ArgumentParser and subcommands, with a thin layer for the contract.

The options come from dataclasses (:mod:`histoscan.arguments`); this module only wires commands together.
What the layer adapts, and why:

- errors: jsonargparse prints the usage, the message and a "tip:" line; the contract is one line,
  ``histoscan <command>: error: <message>``, exit 2 (:meth:`Parser.error`);
- help: jsonargparse's formatter appends "(default: null)" / "(type: ...)" to every option; our help texts
  already state the default the dataclass resolves, so argparse's plain formatter is used;
- the parsed result: jsonargparse nests a subcommand's values (``cfg.slide.read_threads``); the commands and
  their tests read them flat (``args.read_threads``), with ``args.command`` and the global ``-v`` count
  (:meth:`Parser.parse_args` flattens the chain of subcommands);
- `--config FILE` on every command (:func:`add_command`; train, cv and tune keep their own, a TrainConfig):
  the file is read and checked as the command line is parsed (one line naming the file, exit 2) and its
  values travel as ``args.config_values`` for :func:`histoscan.arguments.build`, under the command line's.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jsonargparse import ArgumentParser

from histoscan.arguments import add_config_option, file_options
from histoscan.errors import HistoscanInputError

_REQUIRED = "the following arguments are required: "
_NO_SUBCOMMAND = re.compile(r'expected "(?:(.+)\.)?([^".]+)" to be one of \{.*\}, but it was not provided\.')
VERBOSE_HELP = "log progress details (-v) or debug output (-vv); before or after the command"


class Parser(ArgumentParser):
    """jsonargparse's parser with one-line usage errors and flat results (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)
        kwargs.setdefault("exit_on_error", True)
        super().__init__(*args, **kwargs)
        self.run: Callable[[argparse.Namespace], int] | None = None  # the command's `run(args)`
        self.flat = False  # the root parser (build_parser): results come back flat

    def error(self, message: str, ex: Exception | None = None) -> Any:  # type: ignore[override]
        """One line, ``PROG: error: MESSAGE``, exit 2 (argparse's convention): PROG is the subcommand's."""
        parser = getattr(ex, "subcommand_parser", None) or self
        missing = _NO_SUBCOMMAND.fullmatch(message)
        if missing:  # jsonargparse's wording for a missing subcommand: say it as for any required argument
            message = f"{_REQUIRED}{missing[1]}.{missing[2]}" if missing[1] else f"{_REQUIRED}{missing[2]}"
        if message.startswith(_REQUIRED):
            parser, message = self._name_required(message)
        prog = parser.prog.replace(" [options]", "")
        self.exit(2, f"{prog}: error: {message}\n")

    def _name_required(self, message: str) -> tuple[argparse.ArgumentParser, str]:
        """jsonargparse names a missing argument by its key ("bench.data") from the root; say it as argparse
        does, from the subcommand: "histoscan bench: error: the following arguments are required: --data"."""
        parser: argparse.ArgumentParser = self
        names = []
        for key in message[len(_REQUIRED) :].split(", "):
            *path, dest = key.split(".")
            parser = self
            for name in path:
                action = _subcommands(parser)
                if action is None or name not in action.choices:
                    return self, message
                parser = action.choices[name]
            found = next((a for a in parser._actions if a.dest == dest), None)
            if isinstance(found, argparse._SubParsersAction):
                names.append("{" + ",".join(found.choices) + "}")
            else:
                names.append((found.option_strings or [found.metavar or dest])[0] if found else dest)
        return parser, _REQUIRED + ", ".join(names)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Parse; a command line with subcommands comes back flat (see :func:`flatten`)."""
        cfg = super().parse_args(args, namespace, **kwargs)
        if not self.flat:
            return cfg
        values = flatten(self, cfg)
        if getattr(values, "config_file", None):
            command = command_parser(self, values.command_path)
            try:
                values.config_values = file_options(command, values.config_file, values.command_path)
            except HistoscanInputError as e:
                command.error(str(e))
        return values


def command_parser(parser: argparse.ArgumentParser, path: str) -> argparse.ArgumentParser:
    """The parser of (sub)command `path` (e.g. "stain fit") under `parser`."""
    for name in path.split():
        action = _subcommands(parser)
        assert action is not None
        parser = action.choices[name]
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def flatten(parser: Parser, cfg: Any) -> argparse.Namespace:
    """The values of the chosen (sub)command, flat, with `command` (its first word), `command_path` (e.g.
    "stain fit"), `verbose` (every -v, before or after the command) and `run` (the command's function)."""
    values = {k: v for k, v in cfg.items(branches=True) if "." not in k}
    path: list[str] = []
    verbose = values.pop("verbose", 0) or 0
    node = cfg
    while (action := _subcommands(parser)) is not None:
        name = node[action.dest]
        path.append(name)
        parser, node = action.choices[name], node[name]
        leaf = {k: v for k, v in node.items(branches=True) if "." not in k}
        verbose += leaf.pop("verbose_after", 0) or 0
        values.update(leaf)
    values.pop(action.dest if action else "command", None)
    return argparse.Namespace(
        **values, command=path[0], command_path=" ".join(path), verbose=verbose, run=parser.run
    )


def add_command(
    sub: Any,
    name: str,
    run: Callable[[argparse.Namespace], int] | None,
    help: str,
    description: str = "",
    config: bool = True,
) -> Parser:
    """A subcommand `name` of `sub` (from :meth:`Parser.add_subcommands`) whose `run(args)` does the work.

    A command that runs (`run` given) takes `--config FILE` (YAML of its options) unless `config` is false
    (train, cv and tune: their --config is a TrainConfig file).
    """
    parent = getattr(sub, "parent_prog", "histoscan")
    parser = Parser(prog=f"{parent} {name}", description=description or None)
    parser.run = run
    add_verbose(parser, after=True)  # global options work after the subcommand too
    if run is not None and config:
        add_config_option(parser)
    sub.add_subcommand(name, parser, help=help.replace("%", "%%"))
    return parser


def subcommands(parser: Parser, dest: str) -> Any:
    """The subcommands action of `parser` (values under `dest`), remembering the prog for their names."""
    sub = parser.add_subcommands(dest=dest, required=True)
    sub.parent_prog = parser.prog  # type: ignore[attr-defined]
    return sub


def add_verbose(parser: argparse.ArgumentParser, after: bool) -> None:
    """-v/--verbose, counted: on the root, and after every command (`dest` verbose_after) so it works anywhere."""
    if after:
        parser.add_argument(
            "-v",
            "--verbose",
            action="count",
            dest="verbose_after",
            default=argparse.SUPPRESS,
            help=VERBOSE_HELP,
        )
    else:
        parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)


def iter_commands(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) of every (sub)command under `parser`, e.g. ("stain fit", its parser)."""
    action = _subcommands(parser)
    if action is None:
        return
    for name, command in action.choices.items():
        yield f"{path} {name}".strip(), command
        yield from iter_commands(command, f"{path} {name}")
