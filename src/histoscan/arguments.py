"""Command-line arguments made from option dataclasses (fields declared with :func:`histoscan.ranges.opt`).

One field, one argument: the option name, help (with "(default X)" and the range), choices, metavar and
nargs all come from the field, so no option is declared twice. Every option defaults to None ("not given"):
:func:`given_values` then tells what the user set, and the dataclass supplies every default when it is built
(:func:`build`), running the same checks a Python caller gets.

Why not jsonargparse's ``add_class_arguments`` here (the parser itself is jsonargparse's, see
:mod:`histoscan.cli.parsing`): it spells options by field name (``--read_threads``, where the contract is
``--read-threads``), reports a bad number as a multi-line type error rather than the one-line range message
("--stride 0: must be at least 1"), and shows "(default: null)" for an option whose default the dataclass
resolves. The ~60 lines below keep those contracts. Stdlib only: ``histoscan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from histoscan.ranges import RangeAction, field_option_name


def default_text(f: dataclasses.Field) -> str:
    """The field's default as the help shows it ("" when there is none to show)."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        d = f.default_factory()  # type: ignore[misc]
        return ",".join(map(str, d)) if isinstance(d, list) else str(d)
    if f.default is dataclasses.MISSING or f.default is None or f.default == "":
        return ""
    return str(f.default)


def add_field(parser: Any, f: dataclasses.Field, **override: Any) -> argparse.Action:
    """Add the argument of dataclass field `f` to `parser` (an argparse or jsonargparse parser or group).

    `override` replaces add_argument keywords (e.g. ``help=`` for a command that words one option its own way).
    """
    meta = f.metadata
    is_bool = f.type in ("bool", bool)
    text = meta.get("help", "")
    default = default_text(f)
    if default and meta.get("show_default", True) and not is_bool:
        text += f" (default {default})"
    kwargs: dict[str, Any] = {"help": text.replace("%", "%%")}
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    if meta.get("nargs"):
        kwargs["nargs"] = meta["nargs"]
    if meta.get("const") is not None:
        kwargs["const"] = meta["const"]
    if meta.get("positional"):
        kwargs.update(override)
        return parser.add_argument(f.name, **kwargs)
    kwargs["default"] = None  # "not given": the dataclass default applies when it is built
    if meta.get("required"):
        kwargs["required"] = True
    if is_bool:
        kwargs.update(action="store_true")
    elif meta.get("range") is not None:  # checked as it is parsed: a bad value stops before anything runs
        kwargs.update(action=RangeAction, bounds=meta["range"])
        if meta.get("choices") and not meta.get("metavar"):
            kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}"
    elif meta.get("choices"):  # numeric choices without a range (e.g. --tta 0/4/8): parsed as that kind
        kwargs["choices"] = list(meta["choices"])
        if meta.get("kind") in (int, float):
            # an explicit action keeps argparse's own int/float parsing (jsonargparse would wrap the type)
            kwargs.update(type=meta["kind"], action="store")
    kwargs.update(override)
    return parser.add_argument(field_option_name(f), dest=f.name, **kwargs)


def add_options(parser: Any, cls: type, exclude: tuple[str, ...] = (), **overrides: dict[str, Any]) -> None:
    """Add an argument for every CLI field of dataclass `cls` (not in `exclude`), in declaration order.

    `overrides` maps a field name to add_argument keywords that replace the field's (a command's own help).
    """
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) and f.name not in exclude:
            add_field(parser, f, **overrides.get(f.name, {}))


def given_values(values: Any, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user gave (not None) in parsed `values` (a Namespace or a mapping)."""
    d = values if isinstance(values, dict) else vars(values)
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names and v is not None}


def build(cls: type, values: Any, **extra: Any) -> Any:
    """`cls` from the options the user gave in `values` and `extra` (its defaults for the rest), validated."""
    return cls.from_dict({**given_values(values, cls), **extra})
