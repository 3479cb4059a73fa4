"""Every command's options come from typed dataclasses: one declaration per option, the same checks from Python
and the CLI, and one --device for every command that runs a model, passed to its stage function."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from histoscan.arguments import default_text
from histoscan.cli import build_parser, iter_commands, main
from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.options.data import BenchOptions, DownloadOptions, PrepareOptions
from histoscan.options.model import (
    DEVICE_HELP,
    EvaluateOptions,
    ExplainOptions,
    ExportOptions,
    PredictOptions,
)
from histoscan.options.slide import (
    CohortOptions,
    EngineOptions,
    SlideCommandOptions,
    TilesCommandOptions,
    TilesOptions,
)
from histoscan.options.stain import StainApplyOptions, StainFitOptions
from histoscan.options.training import CvOptions, RunOptions, TuneOptions
from histoscan.serve.settings import ServeSettings
from histoscan.slide.tiles import SlideOptions

# the dataclasses each command's options come from
SOURCES = {
    "prepare": [PrepareOptions],
    "download": [DownloadOptions],
    "train": [RunOptions, TrainConfig],
    "cv": [RunOptions, TrainConfig, CvOptions],
    "tune": [RunOptions, TrainConfig, TuneOptions],
    "evaluate": [EvaluateOptions],
    "predict": [PredictOptions],
    "explain": [ExplainOptions],
    "slide": [SlideCommandOptions, SlideOptions],
    "slides": [CohortOptions, SlideOptions, EngineOptions],
    "tiles": [TilesCommandOptions, TilesOptions],
    "stain": [],
    "stain fit": [StainFitOptions],
    "stain apply": [StainApplyOptions],
    "export": [ExportOptions],
    "serve": [EvaluateOptions, ServeSettings],  # MODEL: the shared model field
    "bench": [BenchOptions],
}
COMMANDS = dict(iter_commands(build_parser()))
# the commands that run a model, with the arguments each needs besides --device (nothing exists: the device is
# checked before any path is read)
RUNS_A_MODEL = {
    "evaluate": ["run", "--data", "data"],
    "predict": ["run", "--data", "data", "--out", "p.csv"],
    "explain": ["run", "img.png", "--out", "ex"],
    "slide": ["run", "s.svs", "--out", "sl"],
    "slides": ["run", "slides", "--out", "cohort"],
    "serve": ["run"],
}


def _fields(command: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for cls in SOURCES[command] for f in dataclasses.fields(cls)}


# config_file: --config FILE, a YAML of the options
SKIPPED = ("help", "verbose_after", "stain_command", "config_file")


def test_every_option_of_every_command_is_a_dataclass_field() -> None:
    assert set(COMMANDS) == set(SOURCES)
    for command, parser in COMMANDS.items():
        fields = _fields(command)
        for action in parser._actions:
            if action.dest in SKIPPED or action.help == "==SUPPRESS==":
                continue
            assert action.dest in fields, (command, action.option_strings or action.dest)


def test_help_states_the_dataclass_default() -> None:
    checked = 0
    for command, parser in COMMANDS.items():
        fields = _fields(command)
        for action in parser._actions:
            f = fields.get(action.dest)
            if (
                f is None
                or not action.option_strings
                or f.type in ("bool", bool)
                or action.help == "==SUPPRESS=="
            ):
                continue
            shown = default_text(f)
            if shown and f.metadata.get("show_default", True):
                assert f"(default {shown})" in action.help, (command, action.option_strings)
                checked += 1
    assert checked > 100


def test_device_is_one_declaration_on_every_command_that_runs_a_model() -> None:
    for command in RUNS_A_MODEL:
        action = COMMANDS[command]._option_string_actions["--device"]
        assert action.dest == "device" and action.help == f"{DEVICE_HELP} (default auto)", command
    assert {c for c, p in COMMANDS.items() if "--device" in p._option_string_actions} == set(RUNS_A_MODEL)


@pytest.mark.parametrize("command", sorted(RUNS_A_MODEL))
def test_a_bad_device_is_one_line_exit_2_nothing_written(
    command: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main([command, *RUNS_A_MODEL[command], "--device", "gpu0"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"histoscan {command}: error: --device gpu0: choose auto, cpu, cuda or cuda:N\n"
    assert list(tmp_path.iterdir()) == []


class _Called(Exception):
    """Raised by a stand-in stage function once it has seen its arguments."""


@pytest.mark.parametrize(
    "command, module, function",
    [
        ("evaluate", "histoscan.evaluation.evaluate", "evaluate"),
        ("predict", "histoscan.inference.predict", "predict"),
        ("explain", "histoscan.explain.gradcam", "explain_files"),
        ("slide", "histoscan.inference.predictor", "load_predictor"),
        ("slides", "histoscan.slide.cohort", "run_cohort"),
    ],
)
def test_device_reaches_the_stage_function(command: str, module: str, function: str, monkeypatch) -> None:
    import importlib

    seen: dict = {}

    def stand_in(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise _Called

    monkeypatch.setattr(importlib.import_module(module), function, stand_in)
    with pytest.raises(_Called):
        main([command, *RUNS_A_MODEL[command], "--device", "cuda:1"])
    assert seen.get("device") == "cuda:1" or "cuda:1" in seen["args"], seen


def test_serve_passes_the_device_in_its_settings(monkeypatch) -> None:
    import histoscan.serve.launch as launch

    seen = {}
    monkeypatch.setattr(launch, "serve", lambda model, settings, announce: seen.update(s=settings) or 0)
    assert main(["serve", "run", "--device", "cpu", "--max-batch", "4"]) == 0
    assert seen["s"] == ServeSettings(device="cpu", max_batch=4)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: EvaluateOptions(model="m", data="d", batch_size=0), "--batch-size 0: must be at least 1"),
        (lambda: EvaluateOptions(model="m", data="d", n_boot=-1), "--n-boot -1: must be at least 0"),
        (lambda: EvaluateOptions(model="m", data="d", tta=3), "--tta 3: choose from 0, 4, 8"),
        (lambda: EvaluateOptions(model="m", data=None), "--data: required"),
        (lambda: PredictOptions(model="m", data="d", out="o", format="tsv"), "--format tsv: choose from csv, kaggle"),
        (lambda: ExplainOptions(model="m", images=[], out="o", device="tpu"), "--device tpu: choose auto, cpu, cuda or cuda:N"),  # noqa: E501
        (lambda: ServeSettings(device="cuda:x"), "--device cuda:x: choose auto, cpu, cuda or cuda:N"),
        (lambda: ExportOptions(model="m", out="o", opset=10), "--opset 10: must be at least 11"),
        (lambda: StainFitOptions(images=["a"], out="o", method="vahadane"), "--method vahadane: choose from macenko, reinhard"),  # noqa: E501
        (lambda: DownloadOptions(dataset="pcam", out="o", split=["train", "dev"]), "--split dev: choose from train, valid, test"),  # noqa: E501
        (lambda: EngineOptions(workers=4), "--workers/--gpus-per-worker/--ray-address need --engine ray"),
        (lambda: CvOptions(use_folds="0,x"), "--use-folds 0,x: give fold numbers such as 0 or 0,1"),
        (lambda: CvOptions(folds=1), "--folds 1: must be at least 2"),
        (lambda: TuneOptions(timeout=0), "--timeout 0: must be above 0"),
        (lambda: SlideCommandOptions(model="m", slide="s", out="o", onnx="none.onnx"), "--onnx none.onnx: file not found"),  # noqa: E501
        (lambda: PrepareOptions(data=None, out="s"), "DATA: required"),
    ],
)  # fmt: skip
def test_python_callers_get_the_cli_checks(build, message: str) -> None:
    with pytest.raises(HistoscanInputError, match=f"^{re.escape(message)}$"):
        build()


def test_parsed_text_becomes_typed_values() -> None:
    assert CvOptions(use_folds="0,2").use_folds == [0, 2]
    assert TuneOptions(params="lr, dropout").params == ["lr", "dropout"]
    assert TuneOptions().use_folds == [0] and DownloadOptions(dataset="pcam", out="o").split == [
        "train",
        "valid",
        "test",
    ]
    assert EngineOptions(engine="ray", workers=4).workers == 4


def test_a_file_of_options_reads_back_with_the_same_checks(tmp_path: Path) -> None:
    s = ServeSettings(port=0, max_batch=8)
    s.save(tmp_path / "serve.yaml")
    assert ServeSettings.load(tmp_path / "serve.yaml") == s
    (tmp_path / "bad.yaml").write_text("port: 70000\n")
    with pytest.raises(
        HistoscanInputError, match=rf"^{tmp_path / 'bad.yaml'}: --port 70000: must be at most 65535$"
    ):
        ServeSettings.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "argv, line",
    [
        (["bench"], "histoscan bench: error: the following arguments are required: --data"),
        (["stain"], "histoscan stain: error: the following arguments are required: {fit,apply}"),
        (
            ["stain", "fit"],
            "histoscan stain fit: error: the following arguments are required: IMAGE_OR_DIR, --out",
        ),
    ],
)
def test_a_missing_argument_is_named_from_its_command(argv: list[str], line: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err == line + "\n"
