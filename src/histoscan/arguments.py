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

from histoscan.errors import HistoscanInputError
from histoscan.ranges import Options, RangeAction, check_field, field_option_name

CONFIG_HELP = (
    "YAML file of this command's options by name (e.g. `batch_size: 32` or `batch-size: 32`): defaults that "
    "the command line overrides; arguments (not options) and required options still go on the command line"
)


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
        return _mark(parser.add_argument(f.name, **kwargs), f)
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
    return _mark(parser.add_argument(field_option_name(f), dest=f.name, **kwargs), f)


def _mark(action: argparse.Action, f: dataclasses.Field) -> argparse.Action:
    action.option_field = f  # type: ignore[attr-defined]  # what `--config FILE` may set (file_options)
    return action


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
    """`cls` from the options the user gave in `values` and `extra` (its defaults for the rest), validated.

    A parsed command line with `--config FILE` carries the file's values (``config_values``, see
    :func:`file_options`): those of `cls`'s fields come first, the command line and `extra` override them.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    from_file = {} if isinstance(values, dict) else getattr(values, "config_values", None) or {}
    file_values = {k: v for k, v in from_file.items() if k in names}
    given = {**given_values(values, cls), **extra}
    try:
        return cls.from_dict({**file_values, **given})
    except HistoscanInputError as e:
        if not file_values:
            raise
        try:  # a rule across fields (e.g. --device's form) broken by the file's values: name the file
            cls.from_dict(given)
        except HistoscanInputError:
            raise e from None
        raise HistoscanInputError(f"{values.config_file}: {e}") from None


def add_config_option(parser: Any) -> argparse.Action:
    """`--config FILE` (dest ``config_file``): a YAML mapping of the command's options (:func:`file_options`)."""
    return parser.add_argument("--config", dest="config_file", metavar="FILE", default=None, help=CONFIG_HELP)


def file_options(parser: argparse.ArgumentParser, path: str, command: str) -> dict[str, Any]:
    """The options in YAML file `path` for the command of `parser`, by field name, each checked like its option.

    Keys are option names as fields (``read_threads``) or dashed (``read-threads``); null means "not given".
    Raise HistoscanInputError, one line naming the file (and the key): not a YAML mapping, a key that is no
    option of `command`, an argument (positionals come from the command line only), or a bad value.
    """
    fields: dict[str, dataclasses.Field] = {}
    for action in parser._actions:
        f = getattr(action, "option_field", None)
        if f is not None:
            fields[f.name] = f
            for s in action.option_strings:
                fields.setdefault(s.lstrip("-").replace("-", "_"), f)
    values: dict[str, Any] = {}
    for key, value in Options.read_yaml(path).items():
        f = fields.get(str(key).replace("-", "_"))  # type: ignore[assignment]
        if f is None:
            raise HistoscanInputError(f"{path}: unknown option {str(key)!r} for {command}")
        meta = f.metadata
        if meta.get("positional"):
            raise HistoscanInputError(
                f"{path}: {key}: {field_option_name(f)} is an argument, give it on the command line"
            )
        if value is None:
            continue
        if meta.get("nargs") in ("+", "*") and not isinstance(value, list):
            value = [value]
        elif meta.get("nargs") not in ("+", "*") and isinstance(value, (list, dict)):
            raise HistoscanInputError(f"{path}: {key} {value!r}: must be a single value")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _is_text(f):
            value = str(value)  # e.g. `device: 0` or `host: 127` where the command line gives text
        try:
            check_field(f, value, name=str(key))
        except HistoscanInputError as e:
            raise HistoscanInputError(f"{path}: {e}") from None
        values[f.name] = value
    return values


def _is_text(f: dataclasses.Field) -> bool:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return f.metadata.get("range") is None and kind.split(" |")[0] in ("str", "Path")
