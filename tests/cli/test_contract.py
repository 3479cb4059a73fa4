"""The CLI contract, table-driven: every user mistake of every subcommand exits 2 with one stderr line.

Each case runs `histoscan.cli.main(argv)` in-process and checks: the exit code; stderr is one line
`histoscan <command>: error: ...` naming the culprit (argparse errors: the last line carries `error:`); no
traceback; every file and folder that existed before is byte-identical afterwards and nothing new appears in
the watched folders (no half-written output, no hidden staging folder) except what a succeeding case writes.
A last test interrupts a real `histoscan train` with SIGINT and resumes it.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from run_fixtures import idc_manifest, idc_store, make_run

from histoscan.cli import main

# nothing may precede the error line: progress bars are off when stderr is not a terminal, and logging is at
# WARNING unless -v is given, so any extra line (a log line, a bar, a warning) counts as a second message


def _snapshot(*roots: Path) -> dict[Path, bytes | None]:
    """Every file (its bytes) and folder (None) under `roots`."""
    snap: dict[Path, bytes | None] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            snap[p] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return snap


def _call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `histoscan ARGV`, with logging set up as in a real process.

    pytest's log handlers are taken off the root logger for the call so `main`'s basicConfig installs its
    stderr handler as the console script would: a stray WARNING/ERROR log line on stderr breaks the one-line
    rule here too.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
    finally:
        root.handlers = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


def _message_lines(err: str) -> list[str]:
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]


# --- the module's shared inputs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, idc_root: Path, one_torch_thread: None
) -> Iterator[SimpleNamespace]:
    """One tiny store, run (random weights), ONNX export, stain fit and image folders, shared by every case."""
    base = tmp_path_factory.mktemp("contract")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HISTOSCAN_CACHE", str(tmp_path_factory.mktemp("env-cache")))
        store = idc_store(idc_root, base / "data", patients=6, per_class=4)
        run = make_run(base / "run", store=store)
        images = base / "images"
        images.mkdir()
        with (base / "data" / "manifest.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows[:3] + rows[-3:]:  # three normal, three tumour patches
            shutil.copy(r["path"], images / Path(r["path"]).name)
        one_class = idc_manifest(idc_root, base / "one-class" / "all.csv", patients=2, per_class=3)
        with one_class.open(newline="") as f:
            normal = [r for r in csv.DictReader(f) if r["label"] == "0"]
        with (base / "one-class" / "labels.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(normal[0]))
            w.writeheader()
            w.writerows(normal)
        one_class.unlink()
        onnx = base / "model.onnx"
        stain = base / "stain.json"
        assert main(["export", str(run), "--out", str(onnx)]) == 0
        assert main(["stain", "fit", str(images), "--out", str(stain)]) == 0
        yield SimpleNamespace(
            base=base,
            store=store.path,
            manifest=base / "data" / "manifest.csv",
            run=run,
            onnx=onnx,
            images=images,
            one_class=base / "one-class" / "labels.csv",
            stain=stain,
            slide=idc_root.parent / "slides" / "cmu-1-small-region.svs",
            tmp=base,  # replaced per case
        )


# --- setups: what a case finds in its own tmp folder before the call ------------------------------------


def _existing_run(e: SimpleNamespace) -> None:
    shutil.copytree(e.run, e.tmp / "runs" / "r")


def _folder_with_checkpoint_dir_only(e: SimpleNamespace) -> None:
    (e.tmp / "runs" / "r" / "checkpoints").mkdir(parents=True)
    (e.tmp / "runs" / "r" / "notes.txt").write_text("mine\n")


def _non_empty(name: str) -> Callable[[SimpleNamespace], None]:
    def setup(e: SimpleNamespace) -> None:
        (e.tmp / name).mkdir(parents=True)
        (e.tmp / name / "keep.txt").write_text("older output\n")

    return setup


def _existing_file(name: str) -> Callable[[SimpleNamespace], None]:
    def setup(e: SimpleNamespace) -> None:
        (e.tmp / name).write_text("older output\n")

    return setup


def _images_with_bad(e: SimpleNamespace) -> None:
    shutil.copytree(e.images, e.tmp / "imgs")
    (e.tmp / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")


def _not_a_slide(e: SimpleNamespace) -> None:
    (e.tmp / "notes.svs").write_text("this is not a slide\n")


def _copy_store(e: SimpleNamespace) -> None:
    shutil.copytree(e.store, e.tmp / "store")


# --- checks of the cases that succeed -------------------------------------------------------------------


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _check_skip_bad(e: SimpleNamespace, out: str, err: str) -> None:
    assert "skipped 1" in out and "broken.png" in out, out
    rows = _csv_rows(e.tmp / "p.csv")
    assert len(rows) == 6 and not any("broken" in r["id"] for r in rows)


def _check_onnx_predict(e: SimpleNamespace, out: str, err: str) -> None:
    assert len(_csv_rows(e.tmp / "p.csv")) == 6
    assert "6 patches" in out, out


@dataclass
class Case:
    id: str
    argv: Callable[[SimpleNamespace], list[str]]
    needles: tuple[str, ...] = ()  # all must appear in the error line (`{tmp}` etc. are formatted from env)
    code: int = 2
    usage: bool = False  # an argparse error: usage line(s) then the error line
    setup: Callable[[SimpleNamespace], None] | None = None
    creates: tuple[str, ...] = ()  # paths under the case's tmp folder a succeeding case may add
    check: Callable[[SimpleNamespace, str, str], None] | None = None
    train_out: bool = False  # a train/cv case writing to tmp/runs/r: no run, no staging


def _train(*extra: str, missing_data: str | None = None) -> Callable[[SimpleNamespace], list[str]]:
    """`train` on the shared store (or on the absent `tmp/missing_data`) into tmp/runs/r, 1 epoch of 1 batch."""

    def argv(e: SimpleNamespace) -> list[str]:
        d = str(e.tmp / missing_data) if missing_data else str(e.store)
        base = ["train", "--data", d, "--out", str(e.tmp / "runs" / "r"), "--epochs", "1"]
        return [*base, "--limit-batches", "1", *extra]

    return argv


def _cmd(*parts: str) -> Callable[[SimpleNamespace], list[str]]:
    """argv with `{name}` parts formatted from the env (e.g. `{run}`, `{tmp}/p.csv`)."""
    return lambda e: [p.format(**vars(e)) for p in parts]


CASES = [
    # train: every option is checked before anything is written
    Case("train-model", _train("--model", "resnet81"), ("--model", "resnet81"), train_out=True),
    Case("train-epochs-0", _train("--epochs", "0"), ("--epochs",), train_out=True),
    Case("train-epochs-neg", _train("--epochs", "-1"), ("--epochs",), train_out=True),
    Case("train-lr-neg", _train("--lr", "-1"), ("--lr",), train_out=True),
    Case("train-lr-nan", _train("--lr", "nan"), ("--lr",), train_out=True),
    Case("train-batch-size-0", _train("--batch-size", "0"), ("--batch-size",), train_out=True),
    Case("train-dropout", _train("--dropout", "1.5"), ("--dropout",), train_out=True),
    Case(
        "train-fractions",
        _train("--val-fraction", "0.6", "--test-fraction", "0.5"),
        ("--val-fraction", "--test-fraction"),
        train_out=True,
    ),
    Case("train-augment", _train("--augment", "d4,bogus"), ("--augment", "bogus"), train_out=True),
    Case("train-missing-data", _train(missing_data="no-such-data"), ("no-such-data",), train_out=True),
    Case(
        "train-out-exists",
        _train(),
        ("--out", "--force"),
        setup=_existing_run,
        train_out=True,
    ),
    Case(
        "train-resume-no-ckpt",
        _train("--resume"),
        ("--resume", "last.ckpt"),
        setup=_folder_with_checkpoint_dir_only,
        train_out=True,
    ),
    # cv
    Case(
        "cv-folds-1",
        lambda e: ["cv", "--data", str(e.store), "--out", str(e.tmp / "runs" / "r"), "--folds", "1"],
        ("--folds",),
        train_out=True,
    ),
    Case(
        "cv-out-exists",
        lambda e: ["cv", "--data", str(e.store), "--out", str(e.tmp / "runs" / "r"), "--folds", "2"],
        ("--out", "--force"),
        setup=_existing_run,
        train_out=True,
    ),
    # evaluate (the one-class case writes to the default RUN/eval-*/: the shared run must stay unchanged)
    Case("evaluate-one-class", _cmd("evaluate", "{run}", "--data", "{one_class}"), ("both classes",)),
    Case(
        "evaluate-out-exists",
        _cmd("evaluate", "{run}", "--data", "{store}", "--out", "{tmp}/ev"),
        ("--out", "--force"),
        setup=_non_empty("ev"),
    ),
    Case(
        "evaluate-missing-model",
        _cmd("evaluate", "{tmp}/no-such-run", "--data", "{store}", "--out", "{tmp}/ev"),
        ("no-such-run",),
    ),
    Case(
        "evaluate-tta-3", _cmd("evaluate", "{run}", "--data", "{store}", "--tta", "3"), ("--tta",), usage=True
    ),
    Case(
        "evaluate-n-boot",
        _cmd("evaluate", "{run}", "--data", "{store}", "--out", "{tmp}/ev", "--n-boot", "-1"),
        ("--n-boot",),
    ),
    # predict
    Case(
        "predict-out-exists",
        _cmd("predict", "{run}", "--data", "{images}", "--out", "{tmp}/p.csv"),
        ("--out", "p.csv", "--force"),
        setup=_existing_file("p.csv"),
    ),
    Case(
        "predict-bad-image",
        _cmd("predict", "{run}", "--data", "{tmp}/imgs", "--out", "{tmp}/p.csv"),
        ("broken.png",),
        setup=_images_with_bad,
    ),
    Case(
        "predict-bad-image-skip-bad",
        _cmd("predict", "{run}", "--data", "{tmp}/imgs", "--out", "{tmp}/p.csv", "--skip-bad"),
        code=0,
        setup=_images_with_bad,
        creates=("p.csv",),
        check=_check_skip_bad,
    ),
    Case(
        "predict-onnx-auto-backend",
        _cmd("predict", "{onnx}", "--data", "{images}", "--out", "{tmp}/p.csv"),
        code=0,
        creates=("p.csv",),
        check=_check_onnx_predict,
    ),
    Case(
        "predict-onnx-backend-torch",
        _cmd("predict", "{onnx}", "--data", "{images}", "--out", "{tmp}/p.csv", "--backend", "torch"),
        ("model.onnx",),
    ),
    # explain
    Case(
        "explain-out-exists",
        _cmd("explain", "{run}", "{images}", "--out", "{tmp}/ex"),
        ("--out", "--force"),
        setup=_non_empty("ex"),
    ),
    Case(
        "explain-missing-image",
        _cmd("explain", "{run}", "{tmp}/no-such.png", "--out", "{tmp}/ex"),
        ("no-such.png",),
    ),
    Case(
        "explain-onnx", _cmd("explain", "{onnx}", "{images}", "--out", "{tmp}/ex"), ("model.onnx", "Grad-CAM")
    ),
    # slide
    Case(
        "slide-out-exists",
        _cmd("slide", "{run}", "{slide}", "--out", "{tmp}/sl", "--no-progress"),
        ("--out", "--force"),
        setup=_non_empty("sl"),
    ),
    Case(
        "slide-not-a-slide",
        _cmd("slide", "{run}", "{tmp}/notes.svs", "--out", "{tmp}/sl", "--no-progress"),
        ("notes.svs",),
        setup=_not_a_slide,
    ),
    Case(
        "slide-min-tissue",
        _cmd("slide", "{run}", "{slide}", "--out", "{tmp}/sl", "--min-tissue", "2"),
        ("--min-tissue",),
    ),
    # numeric options outside their range stop at parsing (tests/cli/test_options.py walks every option)
    Case(
        "slide-threshold-above-1",
        _cmd("slide", "{run}", "{slide}", "--out", "{tmp}/sl", "--threshold", "1.5"),
        ("--threshold 1.5", "at most 1"),
    ),
    Case(
        "slide-stride-0",
        _cmd("slide", "{run}", "{slide}", "--out", "{tmp}/sl", "--stride", "0"),
        ("--stride 0", "at least 1"),
    ),
    Case(
        "slides-threshold-neg",
        _cmd("slides", "{run}", "{tmp}", "--out", "{tmp}/co", "--threshold", "-0.5"),
        ("--threshold -0.5", "at least 0"),
    ),
    Case(
        "serve-port-above-65535", _cmd("serve", "{run}", "--port", "70000"), ("--port 70000", "at most 65535")
    ),
    # export
    Case(
        "export-out-exists",
        _cmd("export", "{run}", "--out", "{tmp}/m.onnx"),
        ("--out", "m.onnx", "--force"),
        setup=_existing_file("m.onnx"),
    ),
    Case(
        "export-opset", _cmd("export", "{run}", "--out", "{tmp}/m.onnx", "--opset", "99"), ("--opset", "99")
    ),
    Case("export-not-onnx", _cmd("export", "{run}", "--out", "{tmp}/x.txt"), ("--out", "x.txt", ".onnx")),
    # stain
    Case(
        "stain-fit-out-exists",
        _cmd("stain", "fit", "{images}", "--out", "{tmp}/stain.json"),
        ("--out", "stain.json", "--force"),
        setup=_existing_file("stain.json"),
    ),
    Case(
        "stain-apply-out-exists",
        _cmd("stain", "apply", "{images}", "--stain", "{stain}", "--out", "{tmp}/norm"),
        ("--out", "--force"),
        setup=_non_empty("norm"),
    ),
    # prepare
    Case(
        "prepare-out-not-a-store",
        _cmd("prepare", "{manifest}", "--out", "{tmp}/stuff", "--force"),
        ("stuff", "not a histoscan store"),
        setup=_non_empty("stuff"),
    ),
    Case(
        "prepare-out-store-exists",
        _cmd("prepare", "{manifest}", "--out", "{tmp}/store"),
        ("--out", "store", "--force"),
        setup=_copy_store,
    ),
    # bench
    Case("bench-no-data", _cmd("bench"), ("--data",), usage=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_contract(
    case: Case, env: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.tmp = tmp_path
    if case.setup is not None:
        case.setup(env)
    watched = (env.base, tmp_path)
    before = _snapshot(*watched)
    argv = case.argv(env)
    capsys.readouterr()

    code, out, err = _call(argv, capsys)

    lines = _message_lines(err)
    assert "Traceback" not in err + out, err
    assert code == case.code, f"exit {code}, stderr:\n{err}"
    if case.code == 2:
        command = argv[0] if argv[0] != "stain" else f"stain {argv[1]}"
        if case.usage:
            assert lines and "error:" in lines[-1], err
            error = lines[-1]
        else:
            assert len(lines) == 1, f"stderr is not one line:\n{err}"
            error = lines[0]
            assert error.startswith(f"histoscan {command.split()[0]}: error: "), error
        for needle in case.needles:
            assert needle in error, (needle, error)
    after = _snapshot(*watched)
    changed = [str(p) for p, data in before.items() if after.get(p, b"<gone>") != data]
    assert not changed, f"changed or removed: {changed}"
    allowed = {tmp_path / c for c in case.creates}
    new = [str(p) for p in after if p not in before and p not in allowed]
    assert not new, f"left behind: {new}"
    if case.train_out:
        runs = tmp_path / "runs"
        existed = tmp_path / "runs" / "r" in before
        assert existed or not (runs / "r").exists()
        assert not (runs.is_dir() and [p.name for p in runs.iterdir() if p.name.startswith(".r.")])
    if case.check is not None:
        case.check(env, out, err)


# --- Ctrl-C ---------------------------------------------------------------------------------------------


def _histoscan() -> list[str]:
    """The console script beside this interpreter (`python -m histoscan.cli` is not runnable: no __main__)."""
    script = Path(sys.executable).parent / "histoscan"
    if not script.is_file():
        pytest.skip(f"no histoscan console script at {script}")
    return [str(script)]


def test_ctrl_c_saves_and_resume_continues(
    env: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "r"
    argv = [
        "train",
        "--data",
        str(env.store),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--limit-batches",
        "2",
    ]
    proc = subprocess.Popen(
        [*_histoscan(), *argv, "--epochs", "500", "--patience", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoints" / "last.ckpt").is_file():
            assert proc.poll() is None, f"train ended early ({proc.returncode}): {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "no checkpoints/last.ckpt within 60 s"
            time.sleep(0.2)
        time.sleep(0.5)  # let the checkpoint file finish
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    last = _message_lines(err)[-1]
    assert last.startswith("histoscan train: interrupted: saved") and "--resume" in last, err
    assert "last.ckpt" in last, last
    done = int(re.search(r"after (\d+) epoch", last).group(1))
    assert done >= 1 and (out / "checkpoints" / "last.ckpt").is_file()

    code, _, err = _call([*argv, "--resume", "--epochs", str(done + 1)], capsys)
    assert code == 0, err
    epochs = [int(r["epoch"]) for r in _csv_rows(out / "metrics.csv")]
    assert epochs == list(range(1, done + 2)), epochs  # 1-based
    assert (out / "threshold.json").is_file()
