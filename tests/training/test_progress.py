"""What `histoscan train` prints (to a pipe), the experiment loggers, and multi-process (DDP) training."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_fixtures import idc_store
from sklearn.metrics import roc_auc_score

from histoscan.cli import main
from histoscan.data.store import PatchStore
from histoscan.inference.predictor import load_predictor

HISTOSCAN = str(Path(sys.executable).parent / "histoscan")


@pytest.fixture(scope="module")
def store(idc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> PatchStore:
    """16 patients x 2 x 3 real IDC patches: small, but each split has both classes."""
    return idc_store(idc_root, tmp_path_factory.mktemp("progress"), patients=16, per_class=3)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    env.update(HISTOSCAN_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_train_to_a_pipe_prints_one_line_per_epoch_and_a_summary(store: PatchStore, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        HISTOSCAN,
        "train",
        "--data",
        str(store.path),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "16",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) <= 8, lines  # start line, 3 epoch lines, 2 summary lines, at most 2 log lines
    start = next(line for line in lines if line.startswith("train: "))
    assert (
        "simple-cnn" in start and "split train" in start and "patients" in start and "up to 3 epochs" in start
    )
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    done = next(line for line in lines if line.startswith("done: "))
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # numbered as the epoch lines number them
    best = max(rows, key=lambda row: float(row["val_auc"]))
    assert f"best epoch {best['epoch']} (val_auc {float(best['val_auc']):.4f})" in done
    assert "--limit-batches" not in start and "--limit-batches" not in done
    assert "stopped: reached --epochs 3" in done and "threshold" in done
    assert f"next: histoscan evaluate {out} --data {store.path} --tta 8" in lines
    text = r.stdout + r.stderr
    assert "LeafSpec" not in text and "HINT" not in text and "\r" not in text and "Traceback" not in text


def test_resume_with_spent_patience_says_why(store: PatchStore, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(store.path),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--limit-batches",
        "2",
    ]
    assert main([*args, "--epochs", "3", "--patience", "0"]) == 0
    first = capsys.readouterr().out
    assert "stopped: early stopping: no val_auc gain for 0 epochs" in first or "reached --epochs 3" in first
    limit = "--limit-batches 2: at most 2 train and 2 val batches per epoch"
    start, done = (next(ln for ln in first.splitlines() if ln.startswith(k)) for k in ("train: ", "done: "))
    assert f"(patience 0), {limit}" in start and done.endswith(f"; {limit}")
    assert main([*args, "--epochs", "6", "--resume"]) == 0
    again = capsys.readouterr().out
    assert "note: early stopping had counted" in again and "pass --patience N" in again
    assert "resuming after epoch" in again and "stopped: " in again


def test_tensorboard_logger_writes_events(store: PatchStore, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = ["--data", str(store.path), "--out", str(out), "--epochs", "1", "--batch-size", "16"]
    assert main(["train", *args, "--limit-batches", "2", "--logger", "tensorboard"]) == 0
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (out / "metrics.csv").is_file()  # metrics.csv is written whatever the logger


def test_missing_logger_package_is_a_clear_error(store: PatchStore, tmp_path: Path, capsys) -> None:
    try:
        import mlflow  # noqa: F401

        pytest.skip("mlflow is installed here")
    except ImportError:
        pass
    code = main(["train", "--data", str(store.path), "--out", str(tmp_path / "r"), "--logger", "mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == "histoscan train: error: --logger mlflow: the mlflow package is not installed " \
        "(pip install mlflow)"  # fmt: skip
    assert not (tmp_path / "r").exists() and [p.name for p in tmp_path.iterdir()] == []


def test_ddp_on_two_cpu_processes_matches_one_process(store: PatchStore, tmp_path: Path) -> None:
    """2 gloo processes: same split, validation AUC over the whole split, files written once, loadable model."""
    common = ["--data", str(store.path), "--epochs", "1", "--batch-size", "8", "--accelerator", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([HISTOSCAN, "train", *common, "--out", str(one)], capture_output=True, text=True,
                        timeout=240, env=_env(tmp_path))  # fmt: skip
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([HISTOSCAN, "train", *common, "--out", str(two), "--devices", "2"], capture_output=True,
                        text=True, timeout=300, env=_env(tmp_path))  # fmt: skip
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "x 2 processes (DDP)" in r2.stdout
    assert r2.stdout.count("done: ") == 1 and r2.stdout.count("train: ") == 1  # rank 0 speaks, once
    assert (one / "split.csv").read_bytes() == (two / "split.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left over
    rows = _rows(two / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1"]  # one row per epoch, written by one process
    assert (two / "threshold.json").is_file()
    # the logged validation AUC is the AUC over the WHOLE validation split (not rank 0's half)
    split = {r["id"]: r["split"] for r in _rows(two / "split.csv")}
    val = np.array([i for i, pid in enumerate(store.ids) if split[pid] == "val"])
    model = load_predictor(two / "checkpoints" / "last.ckpt", device="cpu")
    p = model.predict_proba(np.asarray(store.images[val]))
    assert float(rows[0]["val_auc"]) == pytest.approx(roc_auc_score(store.labels[val], p), abs=1e-4)
    assert main(["predict", str(two), "--data", str(store.path), "--out", str(tmp_path / "p.csv")]) == 0
    assert len(_rows(tmp_path / "p.csv")) == len(store)


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"LOCAL_RANK": "1"}, 1),
        ({"LOCAL_RANK": "1", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 5),
        ({"SLURM_PROCID": "2", "SLURM_NTASKS": "8"}, 2),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 0),
    ],
)
def test_process_rank_before_the_trainer_exists(
    env: dict, rank: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histoscan.training.trainer import process_rank

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert process_rank() == rank


def test_summary_and_start_line_number_epochs_as_metrics_csv_and_show_the_batch_cap() -> None:
    from histoscan.config import TrainConfig
    from histoscan.training.progress import end_summary, start_line

    rows = [
        {"epoch": "1", "val_auc": "0.7"},
        {"epoch": "2", "val_auc": "0.9"},
        {"epoch": "3", "val_auc": "0.9"},
    ]
    cfg = TrainConfig(data="D", epochs=3, patience=3, limit_batches=4)
    done, _ = end_summary(
        "RUN", "D", rows, cfg, "reached --epochs 3", {"threshold": 0.4, "method": "youden"}, 5
    )
    assert done == (
        "done: 3 epoch(s) in 5 s; best epoch 2 (val_auc 0.9000); stopped: reached --epochs 3; threshold 0.4 "
        "(youden on the validation split); --limit-batches 4: at most 4 train and 4 val batches per epoch"
    )  # the first of equal values, as best.ckpt keeps it; 1-based like metrics.csv and the report
    counts = {s: {"n": 10, "positive": 5, "groups": 2} for s in ("train", "val", "test")}
    line = start_line(cfg, counts, 50, 4.0, "cpu", "32-true", 1, 2)
    assert line.endswith("(patience 3), --limit-batches 4: at most 4 train and 4 val batches per epoch, "
                         "resuming after epoch 2")  # fmt: skip
    full = dataclasses.replace(cfg, limit_batches=None)
    assert "limit" not in start_line(full, counts, 50, 4.0, "cpu", "32-true", 1, None)
    assert "limit" not in end_summary("RUN", "D", rows, full, "x", None, 5)[0]
