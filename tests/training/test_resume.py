"""`histoscan train --resume` keeps the run's word: the run's own settings, refused conflicts, 1-based epochs
(also for runs written with 0-based metrics.csv)."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from run_fixtures import idc_store

from histoscan.cli import main
from histoscan.config import TrainConfig
from histoscan.data.store import PatchStore
from histoscan.errors import HistoscanInputError
from histoscan.run import RunDir
from histoscan.training.resume import RESUMABLE, resume_config


def _saved(**kw) -> TrainConfig:
    return TrainConfig(data="/data/store", out="/runs/r", epochs=2, lr=1e-3, limit_batches=1, **kw)


def test_python_caller_with_the_runs_own_config_resumes_with_it() -> None:
    saved = _saved()
    assert resume_config(saved, dataclasses.replace(saved)) == saved
    more = resume_config(
        saved, dataclasses.replace(saved, epochs=5, patience=9, num_workers=2, logger="tensorboard")
    )
    assert (more.epochs, more.patience, more.num_workers, more.logger) == (5, 9, 2, "tensorboard")
    assert dataclasses.replace(more, epochs=2, patience=saved.patience, num_workers=0, logger="csv") == saved


def test_fields_not_given_come_from_the_run() -> None:
    saved = _saved(schedule="plateau", batch_size=16, augment=["d4", "hed"])
    cli = TrainConfig(out="runs/r")  # what the CLI builds from `--out runs/r --resume`: defaults elsewhere
    got = resume_config(saved, cli, given={"out"})
    assert got == dataclasses.replace(saved, out="runs/r")  # epochs 2, not the default 30
    assert resume_config(saved, TrainConfig(out="runs/r", epochs=4), given={"out", "epochs"}).epochs == 4


def test_a_conflicting_option_is_refused_naming_both_values() -> None:
    saved = _saved()
    with pytest.raises(HistoscanInputError) as e:
        resume_config(saved, TrainConfig(lr=0.01, seed=3, epochs=9), given={"lr", "seed", "epochs"})
    msg = str(e.value)
    assert msg.startswith(
        "--lr 0.01: this run was trained with lr 0.001; --seed 3: this run was trained with seed 42 "
        "(options that may change on --resume: --epochs, --patience, --target-sensitivity, --threshold-rule, "
        "--calibrate, --tta, --num-workers, "
        "--accelerator, --devices, --num-nodes, --precision, --logger;"
    )
    assert "\n" not in msg
    with pytest.raises(
        HistoscanInputError, match="--limit-batches 3: this run was trained with limit_batches 1"
    ):
        resume_config(saved, TrainConfig(limit_batches=3), given={"limit_batches"})
    with pytest.raises(HistoscanInputError, match="--augment none: this run was trained with augment d4"):
        resume_config(saved, TrainConfig(augment=[]), given={"augment"})
    with pytest.raises(HistoscanInputError, match="--balanced: this run was trained with balanced false"):
        resume_config(saved, TrainConfig(balanced=True), given={"balanced"})
    # a Python caller passing another configuration (None: every field counts as given)
    with pytest.raises(
        HistoscanInputError, match="--limit-batches 2: this run was trained with limit_batches 1"
    ):
        resume_config(saved, dataclasses.replace(saved, limit_batches=2))


def test_same_values_and_the_same_data_spelled_otherwise_are_fine(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = TrainConfig(data=str(tmp_path / "store"), out="r", lr=1e-3)
    given = TrainConfig(data="./store", out=str(tmp_path / "r"), lr=0.001, seed=42)
    got = resume_config(saved, given, given={"data", "out", "lr", "seed"})
    assert got.data == str(tmp_path / "store") and got.out == str(tmp_path / "r")
    assert set(RESUMABLE) <= {f.name for f in dataclasses.fields(TrainConfig)}


# ---- end to end, through the CLI --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(idc_root: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> PatchStore:
    """12 patients x 2 x 3 real IDC patches: tiny, each split has both classes."""
    return idc_store(idc_root, tmp_path_factory.mktemp("resume"), patients=12, per_class=3)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _train(store: PatchStore, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(store.path), "--out", str(out), "--batch-size", "16", "--limit-batches", "2",
            *extra]  # fmt: skip


def test_resume_continues_to_the_runs_own_epochs(store: PatchStore, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train(store, out, "--epochs", "2")) == 0
    capsys.readouterr()
    # no --epochs: the run's 2 epochs (the old code trained on to the default 8)
    assert main(["train", "--data", str(store.path), "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2"]
    assert "note: this run has trained 2 of its --epochs 2" in said and "done: 2 epoch(s)" in said
    # --epochs may change (recorded), the same values as recorded are fine
    assert main(_train(store, out, "--epochs", "3", "--lr", "0.001", "--resume")) == 0
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3"]
    assert RunDir(out).read_config().epochs == 3
    capsys.readouterr()
    # on to the recorded 3, not 8 (and --data: the run's)
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3"]
    assert "trained 3 of its --epochs 3" in capsys.readouterr().out


def test_conflicting_option_on_resume_is_refused_and_nothing_written(
    store: PatchStore, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(_train(store, out, "--epochs", "1")) == 0
    capsys.readouterr()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert main(_train(store, out, "--epochs", "4", "--lr", "0.01", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("histoscan train: error: --lr 0.01: this run was trained with lr 0.001 ")
    assert "(options that may change on --resume: --epochs, --patience," in err[0]
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["run"]
    # extending the 2-step run (constant rate, no cycle) into a one-cycle of 6 steps works
    assert main(_train(store, out, "--epochs", "3", "--resume")) == 0
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2", "3"]


def test_run_with_zero_based_metrics_resumes_and_is_renumbered(
    store: PatchStore, tmp_path: Path, capsys
) -> None:
    """A run written before epochs were 1-based (metrics.csv from epoch 0, no seconds column) resumes: the old
    rows are renumbered, the rows past the checkpoint dropped, the new rows follow on."""
    out = tmp_path / "run"
    assert main(_train(store, out, "--epochs", "2", "--logger", "csv")) == 0
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    old = ["epoch", "train_loss", "train_auc", "train_acc", "val_loss", "val_auc", "val_acc", "lr"]
    with (out / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old)
        for i, r in enumerate(rows):
            w.writerow([i, *(r[k] for k in old[1:])])
        w.writerow([2, 9, 9, 9, 9, 0.999, 9, 1])  # an epoch past last.ckpt: trained again
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == ["1", "2", "3"]
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--epochs", "3", "--resume"]) == 0
    said = capsys.readouterr().out
    again = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in again] == ["1", "2", "3"]
    assert [r["val_auc"] for r in again[:2]] == [r["val_auc"] for r in rows]
    assert again[2]["val_auc"] != "0.999"
    assert float(again[2]["seconds"]) >= 0 and again[0]["seconds"] == ""
    best = max(again, key=lambda r: float(r["val_auc"]))
    assert f"best epoch {best['epoch']} (val_auc {float(best['val_auc']):.4f})" in said
    assert "resuming after epoch 2" in said and "--limit-batches 2: at most 2 train and 2 val batches" in said
    assert yaml.safe_load((out / "config.yaml").read_text())["limit_batches"] == 2
