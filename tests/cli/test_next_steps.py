"""Every `next:` command a command prints runs as written (exit 0) on a tiny dataset, and so do the next steps
those print in turn: train -> evaluate -> predict, cv -> train -> ..., tune -> train -> ..., stain, export.

A `next:` line is taken as a shell command line (`#` starts a comment); lines that do not start with
`histoscan` (e.g. "open overlay.png") are not commands to run. NEW_DATA stands for data the user has yet to
choose (evaluate -> predict) and is replaced by the tiny dataset."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from run_fixtures import idc_manifest

from histoscan.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PLACEHOLDERS = ("NEW_DATA",)
FAST = ["--epochs", "1", "--limit-batches", "1", "--batch-size", "8"]


@pytest.fixture
def data(idc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> Path:
    """48 real IDC patches of 6 patients (a manifest); the working folder is tmp_path (relative next: paths)."""
    monkeypatch.chdir(tmp_path)
    return idc_manifest(idc_root, tmp_path / "idc" / "labels.csv", patients=6, per_class=4)


def next_steps(out: str) -> list[str]:
    """The `next:` lines of a command's output, as written after `next:`."""
    return [ln.split("next:", 1)[1].strip() for ln in out.splitlines() if ln.startswith("next:")]


def run_chain(argv: list[str], capsys: pytest.CaptureFixture[str], data: Path, depth: int = 4) -> list[str]:
    """Run `histoscan argv`, then each `next:` command it prints (and theirs, `depth` deep); every one must exit
    0. Returns the commands run, the first being argv."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refusing the line
        code = e.code
    out, err = capsys.readouterr()
    assert code == 0, (argv, out, err)
    ran = [shlex.join(["histoscan", *argv])]
    if depth == 0:
        return ran
    for line in next_steps(out):
        words = shlex.split(line, comments=True)
        if not words or words[0] != "histoscan":
            continue  # an instruction for a person (open a file, import into QuPath)
        words = [str(data) if w in PLACEHOLDERS else w for w in words]
        ran += run_chain(words[1:], capsys, data, depth - 1)
    return ran


def test_train_then_evaluate_then_predict(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran = run_chain(["train", "--data", str(data), "--out", "runs/tiny", *FAST], capsys, data)
    assert [shlex.split(c)[1] for c in ran][:3] == ["train", "evaluate", "predict"], ran
    assert Path("runs/tiny/eval-labels/metrics.json").is_file()


def test_cv_then_train_on_all_the_data(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    args = ["cv", "--data", str(data), "--out", "cv", "--folds", "2", *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    steps = next_steps(out)
    # one next step, the final training: the folds' own "evaluate fold-k" lines are not offered (cv did that)
    assert steps == [
        f"histoscan train --config cv/final-config.yaml --data {data} --out cv-final  # the same options, on all "
        "the data"
    ]
    final = Path("cv/final-config.yaml").read_text()
    assert "limit_batches: null" in final and "fold: null" in final and "epochs: 1" in final
    ran = run_chain(shlex.split(steps[0], comments=True)[1:], capsys, data)
    assert [shlex.split(c)[1] for c in ran][:3] == ["train", "evaluate", "predict"], ran
    assert Path("cv-final/config.yaml").is_file() and Path("cv-final/eval-labels/metrics.json").is_file()


def test_tune_then_train(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tune", "--data", str(data), "--out", "tune", "--trials", "1", "--folds", "2", "--use-folds", "0"]
    ran = run_chain([*args, *FAST], capsys, data, depth=2)
    assert [shlex.split(c)[1] for c in ran][:3] == ["tune", "train", "evaluate"], ran


def test_stain_fit_and_export(data: Path, idc_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patches = sorted((idc_root / "images").rglob("*class1.png"))[:8]
    run_chain(["stain", "fit", *map(str, patches), "--out", "stain.json"], capsys, data)
    assert main(["train", "--data", str(data), "--out", "runs/s", *FAST]) == 0
    run_chain(["export", "runs/s", "--out", "runs/s/model.onnx"], capsys, data)
    assert Path("stain.json").is_file() and Path("runs/s/model.onnx").is_file()
