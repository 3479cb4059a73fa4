"""`histoscan tune`: a tiny real Optuna search, pruning through Lightning, resume after a kill, best.yaml -> train."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_fixtures import idc_store

from histoscan.cli import main
from histoscan.config import TrainConfig
from histoscan.data.store import PatchStore

optuna = pytest.importorskip("optuna")
from histoscan.training.tune import SEARCH_SPACE, tune  # noqa: E402

HISTOSCAN = str(Path(sys.executable).parent / "histoscan")


@pytest.fixture(scope="module")
def store(idc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> PatchStore:
    return idc_store(idc_root, tmp_path_factory.mktemp("tune"), patients=12, per_class=3)


def _cfg(store: PatchStore, **kw) -> TrainConfig:
    base = dict(data=str(store.path), epochs=2, batch_size=16, limit_batches=2, seed=3)
    return TrainConfig(**{**base, **kw})


def _trials(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_search_writes_table_and_a_best_config_train_accepts(store: PatchStore, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    said: list[str] = []
    r = tune(_cfg(store), out, n_trials=3, folds=3, use_folds=[0], params=["lr", "dropout"], echo=said.append)
    rows = _trials(out)
    assert len(rows) == 3 and {row["state"] for row in rows} <= {"COMPLETE", "PRUNED"}
    done = [row for row in rows if row["state"] == "COMPLETE"]
    assert done and all(0.0 <= float(row["mean_auc"]) <= 1.0 for row in done)
    assert len({row["lr"] for row in rows}) == 3  # three different points of the space
    best = max(done, key=lambda row: float(row["mean_auc"]))
    assert r["best_value"] == pytest.approx(float(best["mean_auc"]), abs=1e-6)
    cfg = TrainConfig.load(out / "best.yaml")
    assert cfg.lr == pytest.approx(float(best["lr"])) and cfg.dropout == pytest.approx(float(best["dropout"]))
    assert cfg.data == str(store.path) and cfg.folds is None and cfg.out == ""
    assert [line.split(":")[0] for line in said if line.startswith("trial ")] == [
        "trial 1/3",
        "trial 2/3",
        "trial 3/3",
    ]
    # the best configuration trains as is; command-line options override it
    run = tmp_path / "run"
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(run), "--epochs", "1"]) == 0
    trained = TrainConfig.load(run / "config.yaml")
    assert trained.lr == cfg.lr and trained.epochs == 1 and trained.dropout == cfg.dropout


def test_bad_trials_are_pruned_through_lightning(store: PatchStore, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # no AUC reaches 2: every trial is pruned at once
    tune(_cfg(store, epochs=3), out, n_trials=2, folds=3, params=["lr"], pruner=always)
    assert [row["state"] for row in _trials(out)] == ["PRUNED", "PRUNED"]
    study = optuna.load_study(study_name="histoscan", storage=f"sqlite:///{out / 'study.db'}")
    for (
        trial
    ) in study.trials:  # reported by the Lightning callback after epoch 0, stopped there (not after 3)
        assert list(trial.intermediate_values) == [0] and 0.0 <= trial.intermediate_values[0] <= 1.0


def test_a_killed_tune_continues_where_it_stopped(store: PatchStore, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    cmd = [HISTOSCAN, "tune", "--data", str(store.path), "--out", str(out), "--trials", "3", "--folds", "3",
           "--params", "lr,dropout", "--epochs", "2", "--batch-size", "16", "--limit-batches", "2"]  # fmt: skip
    env = {**os.environ, "HISTOSCAN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    db, deadline, states = out / "study.db", time.monotonic() + 120, []
    try:
        # wait for one finished trial and a second one under way that has drawn both its parameters
        running_params = (
            "select count(*) from trial_params p join trials t using (trial_id) where t.state = 'RUNNING'"
        )
        while time.monotonic() < deadline:
            if db.is_file():
                try:
                    with sqlite3.connect(db) as con:
                        states = [s for (s,) in con.execute("select state from trials order by number")]
                        drawn = con.execute(running_params).fetchone()[0]
                except sqlite3.Error:
                    states, drawn = [], 0
                done = states.count("COMPLETE") + states.count("PRUNED")
                if done >= 1 and "RUNNING" in states and drawn >= 2:  # both searched parameters drawn
                    break
            time.sleep(0.2)
        assert "RUNNING" in states, states
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "unfinished trial(s) marked failed and queued again" in r.stdout
    rows = _trials(out)
    finished = [row for row in rows if row["state"] in ("COMPLETE", "PRUNED")]
    failed = [row for row in rows if row["state"] == "FAIL"]
    assert len(finished) == 3 and len(failed) == 1
    retried = [
        row for row in finished if (row["lr"], row["dropout"]) == (failed[0]["lr"], failed[0]["dropout"])
    ]
    assert retried, "the killed trial's parameters are tried again"
    assert (out / "best.yaml").is_file() and set(SEARCH_SPACE) >= {"lr", "dropout"}


def test_recover_queues_only_trials_that_drew_parameters() -> None:
    from histoscan.training.tune import _recover

    study = optuna.create_study(direction="maximize")
    study.ask()  # killed before drawing anything
    drawn = study.ask()
    drawn.suggest_float("lr", 1e-5, 1e-3, log=True)
    assert _recover(study, optuna) == (2, 1)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 2
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == drawn.params  # enqueued as is
