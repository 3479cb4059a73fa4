"""RunDir: the run folder's one owner — staging, commit, --force replacement, atomic files, readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.run import RunDir


def test_stage_then_commit_moves_the_run_into_place(tmp_path: Path) -> None:
    run = RunDir.stage(tmp_path / "run", force=False)
    assert run.staged and run.path.parent == tmp_path and run.path.name.startswith(".run.")
    run.write_config(TrainConfig(data="d", out=str(tmp_path / "run")))
    run.write_split(["a", "b"], np.array([0, 1]), ["p1", "p2"], np.array(["train", "val"]))
    run.write_data({"store": "s", "image_size": 50})
    assert not (tmp_path / "run").exists()  # nothing at --out until the run is committed
    run.commit()
    assert run.path == tmp_path / "run" and not run.staged
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "data.json", "split.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    again = RunDir.open(tmp_path / "run")
    assert again.read_split() == {"a": "train", "b": "val"} and again.read_data()["image_size"] == 50
    assert again.read_config().data == "d"


def test_discard_leaves_nothing_and_an_old_run_untouched(tmp_path: Path) -> None:
    old = tmp_path / "run"
    old.mkdir()
    (old / "config.yaml").write_text("model: simple-cnn\n")
    with pytest.raises(HistoscanInputError, match="use --force"):
        RunDir.stage(old, force=False)
    run = RunDir.stage(old, force=True)
    run.write_data({"x": 1})
    run.discard()  # a failed start
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (old / "config.yaml").read_text() == "model: simple-cnn\n"
    run = RunDir.stage(old, force=True)
    run.write_data({"x": 2})
    run.commit()  # --force replaces the old run only now
    assert sorted(p.name for p in old.iterdir()) == ["data.json"] and RunDir(old).read_data() == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_threshold_and_checkpoint_readers(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_threshold() is None and run.read_data() == {} and run.read_split() == {}
    run.write_threshold({"threshold": "0.25", "method": "youden"})
    assert run.read_threshold()["threshold"] == 0.25
    run.threshold_path.write_text("{not json")
    with pytest.raises(HistoscanInputError, match="threshold.json: not valid JSON"):
        run.read_threshold()
    run.threshold_path.write_text('{"method": "youden"}')
    with pytest.raises(HistoscanInputError, match="not a threshold file"):
        run.read_threshold()
    with pytest.raises(HistoscanInputError, match="run has no checkpoint"):
        run.checkpoint()
    run.checkpoints.mkdir()
    run.last_ckpt.write_bytes(b"x")
    assert run.checkpoint() == run.last_ckpt
    run.best_ckpt.write_bytes(b"y")
    assert run.checkpoint() == run.best_ckpt
    assert RunDir.of_checkpoint(run.best_ckpt) is None  # no config.yaml: a bare checkpoint
    (tmp_path / "config.yaml").write_text("{}")
    assert RunDir.of_checkpoint(run.best_ckpt).path == tmp_path


def test_open_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(HistoscanInputError, match="no such run folder"):
        RunDir.open(tmp_path / "missing")
    with pytest.raises(HistoscanInputError, match="not a run folder"):
        RunDir.open(tmp_path)


def test_metrics_read_back_one_based_also_from_an_old_zero_based_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_metrics() == [] and run.epochs_done() == 0
    run.metrics_path.write_text("epoch,val_auc\n0,0.6\n1,0.7\n2,0.65\n")  # written before 1-based epochs
    assert [(r["epoch"], r["val_auc"]) for r in run.read_metrics()] == [
        ("1", "0.6"),
        ("2", "0.7"),
        ("3", "0.65"),
    ]
    assert run.epochs_done() == 3
    run.write_metrics(run.read_metrics()[:2])  # what a resume keeps: renumbered on disk now
    assert run.metrics_path.read_text().splitlines() == ["epoch,val_auc", "1,0.6", "2,0.7"]
    assert [r["epoch"] for r in run.read_metrics()] == ["1", "2"]  # a new file is left as it is
    run.write_metrics([])
    assert not run.metrics_path.exists()


def test_epoch_offset_tells_old_files_from_new() -> None:
    from histoscan.run import epoch_offset

    assert [epoch_offset(v) for v in ("0", 0.0, "1", 1.0, 5, "", None, "x")] == [1, 1, 0, 0, 0, 0, 0, 0]
