"""Options declared once, as typed dataclass fields: help, default, range and choices live in the field.

Every command's options are dataclasses (TrainConfig, SlideOptions, ServeSettings and the groups of
:mod:`histoscan.options`) whose fields are made with :func:`opt`. The same declaration gives the CLI option
(`histoscan.cli.parsing` builds it: help with the default and the range, a range checked as the value is
parsed), the check a Python caller gets on construction (:class:`Options`, same one-line messages), and the
YAML files (`--config FILE`, RUN/config.yaml). Stdlib only: ``histoscan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from histoscan.errors import HistoscanInputError


def option_name(name: str) -> str:
    """The CLI option of a field: image_size -> --image-size."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Range:
    """Numbers of `kind` (int or float) from `low` to `high` (None: unbounded; `*_open`: the bound excluded)."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, opt: str, value: Any, shown: str | None = None) -> None:
        """Raise HistoscanInputError "OPT VALUE: must be ..." unless `value` is a number in range.

        `shown` is the value as the user typed it (default: the value itself, quoted when not a number).
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HistoscanInputError(f"{opt} {shown or repr(value)}: must be a number")
        shown = shown if shown is not None else str(value)
        if value != value:  # NaN
            raise HistoscanInputError(f"{opt} {shown}: must be a number")
        if self.kind is int and not math.isinf(value) and int(value) != value:
            raise HistoscanInputError(f"{opt} {shown}: must be a whole number")
        low, high = self.low, self.high
        if low is not None and (value < low or (self.low_open and value == low)):
            raise HistoscanInputError(
                f"{opt} {shown}: must be {'above' if self.low_open else 'at least'} {low}"
            )
        if high is not None and (value > high or (self.high_open and value == high)):
            raise HistoscanInputError(
                f"{opt} {shown}: must be {'below' if self.high_open else 'at most'} {high}"
            )
        if math.isinf(value):
            raise HistoscanInputError(f"{opt} {shown}: must be a finite number")

    def parse(self, opt: str, text: str) -> int | float:
        """The number in `text` (as `kind`), checked; raise HistoscanInputError naming `opt` otherwise."""
        try:
            value: int | float = int(text) if self.kind is int else float(text)
        except ValueError:
            try:
                value = float(text)  # "1.5" for a whole number: said so below
            except ValueError:
                raise HistoscanInputError(f"{opt} {text!r}: must be a number") from None
        self.check(opt, value, text)
        return int(value) if self.kind is int else value

    def describe(self) -> str:
        """The range in words, e.g. "at least 1", "0 to 1", "above 0 and at most 10"."""
        parts = []
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return f"{_num(self.low)} to {_num(self.high)}"
        if self.low is not None:
            parts.append(f"{'above' if self.low_open else 'at least'} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'below' if self.high_open else 'at most'} {_num(self.high)}")
        return " and ".join(parts) or "any number"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    kind: type | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    bounds: Range | None = None,
    choices: tuple[Any, ...] | None = None,
    metavar: str | None = None,
    option: str | None = None,
    positional: bool = False,
    nargs: str | None = None,
    const: Any = None,
    required: bool = False,
    cli: bool = True,
    show_default: bool = True,
    factory: Any = None,
) -> Any:
    """A dataclass field that is also a command-line option.

    `help` is the option's text (the CLI adds "(default X)" unless `show_default` is false, and the range);
    `kind` with `low`/`high` (`*_open`: bound excluded) declares a numeric range (`bounds`: an existing
    Range, to share another field's), `choices` the allowed values; `option` overrides the option name
    (default: the field name, dashed); `positional` makes it an argument (`metavar` its name, `nargs` e.g.
    "+"); `required`: a CLI option that must be given; `cli=False`: a field with no option (set by the
    program, read from files).
    """
    ranged_ = kind in (int, float) and (low is not None or high is not None)
    if bounds is None and ranged_:
        bounds = Range(kind, low, high, low_open, high_open)
    meta = dict(
        help=help, range=bounds, choices=choices, metavar=metavar, option=option, positional=positional,
        nargs=nargs, const=const, required=required, cli=cli, show_default=show_default, kind=kind,
    )  # fmt: skip
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_option_name(f: dataclasses.Field) -> str:
    """The CLI spelling of field `f`: its declared `option`, else --field-name (a positional: its metavar)."""
    if f.metadata.get("positional"):
        return f.metadata.get("metavar") or f.name.upper()
    return f.metadata.get("option") or option_name(f.name)


def field_range(cls: type, name: str) -> Range:
    """The Range declared on dataclass field `name` of `cls`."""
    return cls.__dataclass_fields__[name].metadata["range"]


def check_field(f: dataclasses.Field, value: Any, name: str | None = None) -> None:
    """Raise HistoscanInputError "OPT VALUE: ..." unless `value` fits field `f` (range, choices, bool, None).

    `name` replaces OPT (default: the field's option, e.g. a key of a `--config` file as it was written).
    """
    meta, opt_ = f.metadata, name or field_option_name(f)
    if value is None:
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        if meta.get("required") or no_default:
            raise HistoscanInputError(f"{opt_}: required")
        if f.default is not None and f.default is not dataclasses.MISSING:
            raise HistoscanInputError(f"{opt_}: a value is required")
        return
    if meta.get("range") is not None:
        meta["range"].check(opt_, value)
    choices = meta.get("choices")
    if choices is not None:
        values = value if meta.get("nargs") in ("+", "*") and isinstance(value, list) else [value]
        for v in values:
            if v not in choices:
                raise HistoscanInputError(f"{opt_} {v}: choose from {', '.join(map(str, choices))}")
    if f.type in ("bool", bool) and not isinstance(value, bool):
        raise HistoscanInputError(f"{opt_} {value!r}: must be true or false")


def check_fields(obj: Any) -> None:
    """Check every field of dataclass `obj` (see :func:`check_field`)."""
    for f in dataclasses.fields(obj):
        check_field(f, getattr(obj, f.name))


class Options:
    """Base of the option dataclasses: checked on construction, built from and saved as plain mappings.

    A subclass is a ``@dataclass`` whose fields come from :func:`opt`; :meth:`validate` checks each field and
    then the subclass's own cross-field rules (override :meth:`check`).
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field against its declaration, then :meth:`check`; raise naming the option."""
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Cross-field rules of a subclass (none here)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> Any:
        """Build from a mapping, rejecting unknown keys and bad values with one line (naming `source`)."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise HistoscanInputError(f"{where or 'config: '}not a mapping of option names to values")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise HistoscanInputError(f"{where or 'config: '}unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**d)
        except HistoscanInputError as e:
            raise HistoscanInputError(f"{where}{e}") from None
        except TypeError as e:  # a required field missing (dataclass signature)
            raise HistoscanInputError(f"{where or 'config: '}{e}") from None

    def save(self, path: Any) -> None:
        """Write as YAML (atomically)."""
        import yaml

        from histoscan.utils.fs import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def read_yaml(cls, path: Any) -> dict[str, Any]:
        """The mapping in YAML file `path` (one-line errors naming the file)."""
        from pathlib import Path

        import yaml

        path = Path(path)
        if not path.is_file():
            raise HistoscanInputError(f"{path}: config file not found")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise HistoscanInputError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(d, dict):
            raise HistoscanInputError(f"{path}: not a mapping of option names to values")
        return d

    @classmethod
    def load(cls, path: Any) -> Any:
        """Read a YAML file written by :meth:`save` (or by hand: the same names and checks)."""
        return cls.from_dict(cls.read_yaml(path), source=str(path))


class RangeAction(argparse.Action):
    """Store a number checked against `bounds` as it is parsed: a bad value is one usage error line, exit 2.

    The help text gains the allowed range; `deprecated_for` makes this option an old spelling of another
    (one "warning: ... is deprecated" line on stderr, the value stored under the new option's dest).
    """

    def __init__(self, *args: Any, bounds: Range, deprecated_for: str | None = None, **kwargs: Any) -> None:
        if kwargs.get("help") not in (None, argparse.SUPPRESS):
            kwargs["help"] = f"{kwargs['help']} [{bounds.describe()}]"
        super().__init__(*args, **kwargs)
        self.bounds, self.deprecated_for = bounds, deprecated_for

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Any = None,
    ) -> None:
        opt = option_string or self.dest
        try:
            value = self.bounds.parse(opt, values)
        except HistoscanInputError as e:
            parser.error(str(e))
        if self.deprecated_for:
            print(f"warning: {opt} is deprecated, use {self.deprecated_for}", file=sys.stderr)
        setattr(namespace, self.dest, value)
