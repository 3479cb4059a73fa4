"""End-to-end training on real idc-breast patches: run folder, grouped split, metrics, resume, --force."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from histoscan.cli import main
from histoscan.config import TrainConfig
from histoscan.data.store import prepare
from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import load_predictor
from histoscan.training.train import train


@pytest.fixture(scope="session")
def idc_store(idc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """idc-breast packed once for the session (50 px, reflect-padded edge patches)."""
    out = tmp_path_factory.mktemp("stores") / "idc"
    prepare(idc_root, out)
    return out


def _cfg(store: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(store),
        out=str(out),
        model="simple-cnn",
        epochs=2,
        batch_size=32,
        limit_batches=3,
        augment=["d4", "hed"],
    )
    base.update(kw)
    return TrainConfig(**base)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_end_to_end_run_folder(idc_store: Path, tmp_path: Path):
    run = train(_cfg(idc_store, tmp_path / "run"))
    for name in (
        "config.yaml",
        "split.csv",
        "metrics.csv",
        "threshold.json",
        "data.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).is_file(), name
    # split grouped by patient: no patient on two sides, all three sides present
    split = _rows(run / "split.csv")
    side_of: dict[str, set[str]] = {}
    for r in split:
        side_of.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in side_of.values())
    assert {r["split"] for r in split} == {"train", "val", "test"} and len(split) == 7889
    # one metrics row per epoch, every column filled with a sane number
    rows = _rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # 1-based, as the console and the report number them
    for r in rows:
        for k in ("train_loss", "val_loss"):
            assert 0 < float(r[k]) < 5
        for k in ("train_auc", "val_auc", "train_acc", "val_acc"):
            assert 0 <= float(r[k]) <= 1
    thr = json.loads((run / "threshold.json").read_text())
    assert 0 < thr["threshold"] < 1 and thr["method"] == "youden"
    # the seam downstream stages use
    model = load_predictor(run)
    card = model.card
    assert card.image_size == 50 and card.mpp == pytest.approx(4.0) and card.threshold == thr["threshold"]
    p = model.predict_proba(np.zeros((3, 50, 50, 3), np.uint8))
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    assert TrainConfig.load(run / "config.yaml") == _cfg(idc_store, tmp_path / "run")


def _same_weights(a_run: Path, b_run: Path) -> None:
    a = torch.load(a_run / "checkpoints/last.ckpt", weights_only=False)
    b = torch.load(b_run / "checkpoints/last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"]
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6, msg=k)


def test_resume_with_more_epochs_matches_uninterrupted_run_on_plateau(idc_store: Path, tmp_path: Path):
    kw = dict(limit_batches=2, patience=10, schedule="plateau")
    full = train(_cfg(idc_store, tmp_path / "full", epochs=3, **kw))
    part = train(_cfg(idc_store, tmp_path / "part", epochs=2, **kw))
    resumed = train(_cfg(idc_store, tmp_path / "part", epochs=3, **kw), resume=True)
    _same_weights(full, resumed)
    ra, rb = _rows(full / "metrics.csv"), _rows(part / "metrics.csv")
    assert [r["epoch"] for r in rb] == ["1", "2", "3"]
    assert TrainConfig.load(part / "config.yaml").epochs == 3  # the extended run records its new length
    assert [r["val_auc"] for r in ra] == [r["val_auc"] for r in rb]


class _StopAfter(L.Callback):
    """Ends the run after `epochs` epochs, as an interruption would (last.ckpt written)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_interrupted_one_cycle_run_resumes_exactly(idc_store: Path, tmp_path: Path):
    """The default one-cycle schedule spans --epochs: a run stopped early and resumed equals one never stopped."""
    cfg = _cfg(idc_store, tmp_path / "full", epochs=3, limit_batches=2, patience=10, schedule="onecycle")
    full = train(cfg)
    part_cfg = _cfg(idc_store, tmp_path / "part", epochs=3, limit_batches=2, patience=10, schedule="onecycle")
    part = train(part_cfg, callbacks=[_StopAfter(2)])
    assert [r["epoch"] for r in _rows(part / "metrics.csv")] == ["1", "2"]
    resumed = train(part_cfg, resume=True)
    _same_weights(full, resumed)
    assert [r["lr"] for r in _rows(full / "metrics.csv")] == [r["lr"] for r in _rows(part / "metrics.csv")]


def test_one_cycle_resumed_with_more_epochs_follows_the_longer_cycle(idc_store: Path, tmp_path: Path):
    """`--resume --epochs 4` after a 2-epoch one-cycle run re-plans the cycle for 4 epochs (no error past its
    old end): from epoch 3 on the learning rate is the 4-epoch run's."""
    kw = dict(limit_batches=2, patience=10, schedule="onecycle")
    full = train(_cfg(idc_store, tmp_path / "full", epochs=4, **kw))
    part = train(_cfg(idc_store, tmp_path / "part", epochs=2, **kw))
    first = [float(r["lr"]) for r in _rows(part / "metrics.csv")]
    train(_cfg(idc_store, tmp_path / "part", epochs=4, **kw), resume=True)
    lr_full = [float(r["lr"]) for r in _rows(full / "metrics.csv")]
    lr_part = [float(r["lr"]) for r in _rows(part / "metrics.csv")]
    assert len(lr_part) == 4 and lr_part[:2] == first
    assert lr_part[2:] == pytest.approx(lr_full[2:], rel=1e-6)


def test_existing_run_needs_force(idc_store: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    args = ["train", "--data", str(idc_store), "--out", str(run), "--epochs", "1", "--limit-batches", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--force" in err and str(run) in err and len(err.strip().splitlines()) == 1
    assert (run / "keep.txt").read_text() == "x"
    assert main(args + ["--force", "--batch-size", "16"]) == 0
    assert not (run / "keep.txt").exists() and (run / "checkpoints/best.ckpt").is_file()


def test_resume_without_checkpoint_is_a_clear_error(idc_store: Path, tmp_path: Path, capsys):
    assert main(["train", "--data", str(idc_store), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "last.ckpt not found" in capsys.readouterr().err


def test_python_resume_with_another_recipe_is_refused(idc_store: Path, tmp_path: Path):
    """A Python caller's config counts as given in full: one that differs from the run's (other than what may
    change on resume) is refused before anything is written."""
    part = train(_cfg(idc_store, tmp_path / "part", epochs=1, limit_batches=2))
    before = (part / "checkpoints/last.ckpt").read_bytes()
    with pytest.raises(
        HistoscanInputError, match="--limit-batches 3: this run was trained with limit_batches 2"
    ):
        train(_cfg(idc_store, tmp_path / "part", epochs=2), resume=True)
    assert (part / "checkpoints/last.ckpt").read_bytes() == before and len(_rows(part / "metrics.csv")) == 1
