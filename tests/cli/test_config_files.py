"""`--config FILE` on every command: a YAML mapping of the command's options, under the command line's values."""

from __future__ import annotations

from pathlib import Path

import pytest

from histoscan.arguments import build
from histoscan.cli import build_parser, iter_commands, main
from histoscan.options.model import EvaluateOptions, PredictOptions
from histoscan.serve.settings import ServeSettings
from histoscan.slide.tiles import SlideOptions

# each command: its arguments besides --config, the class built, an option in the file (key, value, the
# field), and the same option on the command line (with the value it gives)
CASES = {
    "slide": (["run", "s.svs", "--out", "sl"], SlideOptions, "read-threads", 3, "read_threads", ["--read-threads", "5"], 5),  # noqa: E501
    "slides": (["run", "slides", "--out", "c"], SlideOptions, "read_threads", 2, "read_threads", ["--read-threads", "6"], 6),  # noqa: E501
    "evaluate": (["run", "--data", "d"], EvaluateOptions, "batch_size", 32, "batch_size", ["--batch-size", "8"], 8),  # noqa: E501
    "predict": (["run", "--data", "d", "--out", "p.csv"], PredictOptions, "format", "kaggle", "format", ["--format", "csv"], "csv"),  # noqa: E501
    "serve": (["run"], ServeSettings, "max_batch", 4, "max_batch", ["--max-batch", "2"], 2),
}  # fmt: skip


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def _built(command: str, argv: list[str]):
    args, cls = CASES[command][0], CASES[command][1]
    parsed = build_parser().parse_args([command, *args, *argv])
    return build(cls, parsed, force=False) if cls is SlideOptions else build(cls, parsed)


def _refused(command: str, text: str, tmp_path: Path, monkeypatch, capsys) -> tuple[str, str, Path]:
    """Run `command` with a config file holding `text` in an empty working folder; it must exit 2.
    Returns (config path, stderr, working folder)."""
    work = tmp_path / "work"
    work.mkdir()
    cfg = _config(tmp_path, text)
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as e:
        main([command, *CASES[command][0], "--config", cfg])
    assert e.value.code == 2
    return cfg, capsys.readouterr().err, work


@pytest.mark.parametrize("command", sorted(CASES))
def test_a_value_from_the_file_is_used(command: str, tmp_path: Path) -> None:
    _, _, key, value, name, _, _ = CASES[command]
    cfg = _config(tmp_path, f"{key}: {value}\n")
    assert getattr(_built(command, ["--config", cfg]), name) == value


@pytest.mark.parametrize("command", sorted(CASES))
def test_the_command_line_overrides_the_file(command: str, tmp_path: Path) -> None:
    _, _, key, value, name, given, expected = CASES[command]
    cfg = _config(tmp_path, f"{key}: {value}\n")
    assert getattr(_built(command, [*given, "--config", cfg]), name) == expected
    assert getattr(_built(command, ["--config", cfg, *given]), name) == expected


def test_serve_runs_with_the_file_settings(tmp_path: Path, monkeypatch) -> None:
    import histoscan.serve.launch as launch

    seen = {}
    monkeypatch.setattr(launch, "serve", lambda model, settings, announce: seen.update(s=settings) or 0)
    cfg = _config(tmp_path, "max-batch: 4\nhost: 0.0.0.0\nworkers: 2\n")
    assert main(["serve", "run", "--config", cfg, "--workers", "1"]) == 0
    assert seen["s"] == ServeSettings(max_batch=4, host="0.0.0.0", workers=1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("foo: 1\n", "unknown option 'foo' for {command}"),
        ("[1, 2]\n", "not a mapping of option names to values"),
        ("just text\n", "not a mapping of option names to values"),
        ("a: [\n", "not valid YAML"),
        ("model: m\n", "model: MODEL is an argument, give it on the command line"),
    ],
)
@pytest.mark.parametrize("command", sorted(CASES))
def test_a_bad_file_is_one_line_exit_2_nothing_written(
    command: str, text: str, message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    cfg, err, work = _refused(command, text, tmp_path, monkeypatch, capsys)
    assert err.startswith(f"histoscan {command}: error: {cfg}: ") and err.count("\n") == 1, err
    assert message.format(command=command) in err
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "command, text, message",
    [
        ("slide", "read_threads: 0\n", "read_threads 0: must be at least 1"),
        ("slides", "read-threads: -1\n", "read-threads -1: must be at least 1"),
        ("evaluate", "batch_size: 0\n", "batch_size 0: must be at least 1"),
        ("evaluate", "tta: 3\n", "tta 3: choose from 0, 4, 8"),
        ("predict", "format: tsv\n", "format tsv: choose from csv, kaggle"),
        ("predict", "batch_size: [1, 2]\n", "batch_size [1, 2]: must be a single value"),
        ("serve", "max_batch: lots\n", "max_batch 'lots': must be a number"),
    ],
)
def test_a_bad_value_names_the_file_and_the_key(
    command: str, text: str, message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    cfg, err, work = _refused(command, text, tmp_path, monkeypatch, capsys)
    assert err == f"histoscan {command}: error: {cfg}: {message}\n"
    assert list(work.iterdir()) == []


def test_a_rule_across_fields_broken_by_the_file_names_the_file(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, "device: tpu\n")
    assert main(["serve", "run", "--config", cfg]) == 2
    assert (
        capsys.readouterr().err
        == f"histoscan serve: error: {cfg}: --device tpu: choose auto, cpu, cuda or cuda:N\n"
    )


def test_a_missing_file_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "run", "--data", "d", "--config", str(tmp_path / "none.yaml")])
    assert e.value.code == 2
    assert (
        capsys.readouterr().err
        == f"histoscan evaluate: error: {tmp_path / 'none.yaml'}: config file not found\n"
    )


def test_null_is_not_given_and_lists_take_one_value(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "batch_size: null\n")
    assert _built("evaluate", ["--config", cfg]).batch_size == EvaluateOptions(model="m", data="d").batch_size


def test_every_command_that_runs_takes_config() -> None:
    for path, parser in iter_commands(build_parser()):
        if parser.run is None:  # `stain`: its subcommands run
            continue
        action = parser._option_string_actions["--config"]
        expected = "config" if path in ("train", "cv", "tune") else "config_file"
        assert action.dest == expected, path


def test_stain_fit_reads_its_options(tmp_path: Path) -> None:
    from histoscan.options.stain import StainFitOptions

    cfg = _config(tmp_path, "method: reinhard\n")
    parsed = build_parser().parse_args(["stain", "fit", "a.png", "--out", "s.json", "--config", cfg])
    assert build(StainFitOptions, parsed).method == "reinhard"
