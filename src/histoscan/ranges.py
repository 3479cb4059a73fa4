"""Allowed ranges of numeric options, declared once: checked when the CLI parses a value and when a dataclass
(TrainConfig, SlideOptions, ServeSettings) is built from Python, with the same one-line messages.

A dataclass field declares its range with :func:`ranged` (TrainConfig: ``_opt(low=..., ...)``); a CLI option
takes it with ``**field_option(Cls, "name")``, and an option with no dataclass behind it declares it in place
with ``**number(int, low=1)``. Stdlib only: ``histoscan --help`` stays fast.
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


def ranged(default: Any, kind: type = float, **bounds: Any) -> Any:
    """A dataclass field with a declared Range (`low`, `high`, `low_open`, `high_open`) and its CLI option name
    (`option=`, default from the field name)."""
    option = bounds.pop("option", None)
    return field(default=default, metadata={"range": Range(kind, **bounds), "option": option})


def field_range(cls: type, name: str) -> Range:
    """The Range declared on dataclass field `name` of `cls`."""
    return cls.__dataclass_fields__[name].metadata["range"]


def check_ranges(obj: Any) -> None:
    """Check every field of dataclass `obj` that declares a Range (None means "not set" and passes)."""
    for f in dataclasses.fields(obj):
        rng = f.metadata.get("range")
        value = getattr(obj, f.name)
        if rng is not None and value is not None:
            rng.check(f.metadata.get("option") or option_name(f.name), value)


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


def number(kind: type = float, **bounds: Any) -> dict[str, Any]:
    """add_argument keywords of a numeric option with its range: ``p.add_argument("--n", **number(int, low=1))``."""
    return {"action": RangeAction, "bounds": Range(kind, **bounds)}


def field_option(cls: type, name: str, default: Any = dataclasses.MISSING) -> dict[str, Any]:
    """add_argument keywords of the option of dataclass field `name`: its Range and default (or `default`)."""
    f = cls.__dataclass_fields__[name]
    default = f.default if default is dataclasses.MISSING else default
    return {"action": RangeAction, "bounds": f.metadata["range"], "default": default}
