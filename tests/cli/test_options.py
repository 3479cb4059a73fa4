"""Every numeric option of every command, table-driven from the parser itself: each declares its range once, and
a value just outside it (or not a number) is one stderr line naming the option, exit 2, nothing written.

Also: option names that mean the same in `slide` and `slides`, global options after the command, model ids as
the registry spells them, and the ranges checked for Python callers of SlideOptions / ServeSettings.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path

import pytest

from histoscan.cli import build_parser, iter_commands, main
from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.ranges import Range, RangeAction, field_range
from histoscan.serve.settings import ServeSettings
from histoscan.slide.tiles import SlideOptions

README = Path(__file__).resolve().parents[2] / "README.md"

# the arguments each command needs besides the option under test (paths relative to the test's empty folder)
BASE = {
    "prepare": ["data", "--out", "store"],
    "download": ["pcam", "--out", "dl"],
    "train": ["--data", "data", "--out", "run"],
    "cv": ["--data", "data", "--out", "cv"],
    "tune": ["--data", "data", "--out", "tune"],
    "evaluate": ["run", "--data", "data", "--out", "ev"],
    "predict": ["run", "--data", "data", "--out", "p.csv"],
    "slide": ["run", "s.svs", "--out", "sl"],
    "slides": ["run", "slides", "--out", "cohort"],
    "tiles": ["s.svs", "--annotations", "a.xml", "--out", "store"],
    "stain fit": ["imgs", "--out", "stain.json"],
    "export": ["run", "--out", "m.onnx"],
    "serve": ["run"],
    "bench": ["--data", "data"],
}


def _numeric_options() -> list[tuple[str, argparse.Action]]:
    """(command, action) of every option of every command that takes a number."""
    found = []
    for command, parser in iter_commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, RangeAction) or action.type in (int, float):
                found.append((command, action))
    return found


OPTIONS = _numeric_options()


def _text(x: float) -> str:
    """A number as typed on a command line (no exponent: argparse takes "-0.001", not "-1e-03", as a value)."""
    return str(int(x)) if float(x).is_integer() else f"{x:.6f}".rstrip("0")


def _outside(r: Range) -> list[tuple[str, str]]:
    """(value, the message's end) just outside each bound of `r`, and values that are not numbers."""
    step = 1 if r.kind is int else 0.001
    cases = []
    if r.low is not None:
        v = r.low if r.low_open else r.low - step
        cases.append((_text(v), f"must be {'above' if r.low_open else 'at least'} {r.low}"))
    if r.high is not None:
        v = r.high if r.high_open else r.high + step
        cases.append((_text(v), f"must be {'below' if r.high_open else 'at most'} {r.high}"))
    cases.append(("abc", "must be a number"))
    if r.kind is int:
        cases.append(("1.5", "must be a whole number"))
    else:
        cases.append(("nan", "must be a number"))
        if r.high is None:
            cases.append(("inf", "must be a finite number"))
    return cases


CASES = [
    pytest.param(command, opt, value, end, id=f"{command} {opt} {value}")
    for command, action in OPTIONS
    if isinstance(action, RangeAction)
    for opt in action.option_strings
    for value, end in _outside(action.bounds)
]


def _call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_every_numeric_option_declares_its_range() -> None:
    """A new `type=int` option without a range (or choices) fails here; so does a command missing from BASE."""
    bare = [f"{c} {a.option_strings}" for c, a in OPTIONS if not isinstance(a, RangeAction) and not a.choices]
    assert not bare, f"numeric options without a declared range: {bare}"
    commands = {c for c, _ in OPTIONS}
    assert commands <= set(BASE), f"add the arguments of {commands - set(BASE)} to BASE"
    named = {(c, o) for c, a in OPTIONS for o in a.option_strings}
    for expected in [
        ("serve", "--port"),
        ("slide", "--stride"),
        ("slides", "--threshold"),
        ("train", "--lr"),
    ]:
        assert expected in named
    for _, action in OPTIONS:  # the help states the range
        if isinstance(action, RangeAction) and action.help != argparse.SUPPRESS:
            assert action.bounds.describe() in action.help, action.option_strings


@pytest.mark.parametrize("command, opt, value, end", CASES)
def test_value_outside_the_range_is_one_line_exit_2_nothing_written(
    command: str, opt: str, value: str, end: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _call([*command.split(), *BASE[command], opt, value], capsys)
    assert code == 2, err
    assert "Traceback" not in out + err
    shown = repr(value) if end == "must be a number" and value == "abc" else value
    assert err == f"histoscan {command}: error: {opt} {shown}: {end}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command, opt", [(c, a.option_strings[0]) for c, a in OPTIONS if not isinstance(a, RangeAction)]
)
def test_numeric_choice_outside_the_choices_is_one_line(
    command: str, opt: str, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    code, out, err = _call([*command.split(), *BASE[command], opt, "3"], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert err.count("\n") == 1 and err.startswith(f"histoscan {command}: error: ") and opt in err, err
    assert list(tmp_path.iterdir()) == []


# --- one declaration: the CLI's range is the dataclass field's, and Python callers get the same check -------


@pytest.mark.parametrize(
    "command, cls",
    [("slide", SlideOptions), ("slides", SlideOptions), ("serve", ServeSettings), ("train", TrainConfig)],
)
def test_cli_ranges_are_the_dataclass_fields(command: str, cls: type) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    actions = [a for c, a in OPTIONS if c == command and isinstance(a, RangeAction) and a.dest in names]
    assert actions
    for action in actions:
        assert action.bounds is field_range(cls, action.dest), action.option_strings


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SlideOptions(stride=0), "--stride 0: must be at least 1"),
        (lambda: SlideOptions(threshold=1.5), "--threshold 1.5: must be at most 1"),
        (lambda: SlideOptions(threshold=-0.5), "--threshold -0.5: must be at least 0"),
        (lambda: SlideOptions(read_threads=0), "--read-threads 0: must be at least 1"),
        (lambda: SlideOptions(min_tissue=float("nan")), "--min-tissue nan: must be a number"),
        (lambda: ServeSettings(port=70000), "--port 70000: must be at most 65535"),
        (lambda: ServeSettings(max_upload_mb=0), "--max-upload-mb 0: must be above 0"),
        (lambda: ServeSettings(workers="2"), "--workers '2': must be a number"),
    ],
)
def test_python_callers_get_the_same_checks(build, message: str) -> None:
    with pytest.raises(HistoscanInputError, match=f"^{re.escape(message)}$"):
        build()


# --- names ----------------------------------------------------------------------------------------------


def _option(command: str, opt: str) -> argparse.Action:
    return next(a for c, a in OPTIONS if c == command and opt in a.option_strings)


def test_workers_and_read_threads_mean_the_same_in_slide_and_slides(capsys) -> None:
    for command in ("slide", "slides"):
        assert _option(command, "--read-threads").dest == "read_threads"
    assert _option("slides", "--workers").dest == "workers"  # parallel slide workers
    assert "parallel slide workers" in _option("slides", "--workers").help
    args = build_parser().parse_args(["slide", "run", "s.svs", "--out", "o", "--read-threads", "3"])
    assert args.read_threads == 3 and capsys.readouterr().err == ""


def test_old_slide_workers_still_works_with_a_deprecation_warning(capsys) -> None:
    args = build_parser().parse_args(["slide", "run", "s.svs", "--out", "o", "--workers", "3"])
    assert args.read_threads == 3
    assert capsys.readouterr().err == "warning: --workers is deprecated, use --read-threads\n"
    assert "--workers" not in dict(iter_commands(build_parser()))["slide"].format_help()  # not advertised


@pytest.mark.parametrize("before", [True, False])
def test_verbose_before_or_after_the_command(before: bool, tmp_path: Path, capsys) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []  # so main's basicConfig applies, as in a real process
    try:
        rest = ["fit", str(tmp_path / "none.png"), "--out", str(tmp_path / "s.json")]
        argv = ["-vv", "stain", *rest] if before else ["stain", *rest[:1], "-v", *rest[1:], "-v"]
        assert main(argv) == 2  # the missing image: after logging is set up
        assert root.level == logging.DEBUG
    finally:
        root.handlers = handlers
        root.setLevel(level)
    assert "none.png" in capsys.readouterr().err
    for command, parser in iter_commands(build_parser()):
        assert "-v" in parser._option_string_actions, command


def test_model_ids_as_the_registry_spells_them() -> None:
    from histoscan.models import REGISTRY

    help_text = TrainConfig.__dataclass_fields__["model"].metadata["help"]
    listed = re.findall(r"[\w:<>-]+", help_text.split(":", 1)[1])
    assert set(REGISTRY) | {"timm:<name>", "torchvision:<name>"} == set(listed) - {"or"}
    models = README.read_text().split("Models (`--model`):", 1)[1].split("\n\n", 1)[0]
    assert set(REGISTRY) <= set(re.findall(r"`([\w-]+)`", models))
