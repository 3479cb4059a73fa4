"""`histoscan tune`: a tiny real Optuna search, pruning through Lightning, resume after a kill, best.yaml -> train."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from run_fixtures import idc_store

from histoscan.cli import main
from histoscan.config import TrainConfig
from histoscan.data.store import PatchStore
from histoscan.errors import HistoscanInputError

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
    drawn = {(row["lr"], row["dropout"]) for row in finished}
    assert len(drawn) == 3, "the resumed part draws new points, not the first part's again"
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


# -- a tune folder continues only its own study (issue 17) ------------------------------------------------------

BASE = {"--trials": "1", "--folds": "3", "--use-folds": "0", "--params": "lr,dropout", "--epochs": "1",
        "--batch-size": "16", "--limit-batches": "2", "--seed": "3"}  # fmt: skip


def _argv(data: Path, out: Path, **changed: str | None) -> list[str]:
    """`histoscan tune` arguments: BASE with `changed` options (--use_folds -> --use-folds; None: left out)."""
    opts = {**BASE, **{"--" + k.replace("_", "-"): v for k, v in changed.items()}}
    argv = ["tune", "--data", str(data), "--out", str(out)]
    for k, v in opts.items():
        argv += [] if v is None else [k, v]
    return argv


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with the bytes of its files (None for a folder)."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def tuned(store: PatchStore, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished one-trial tune folder made by the CLI with --limit-batches 2, and what the CLI printed."""
    out = tmp_path_factory.mktemp("tuned") / "tune"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(_argv(store.path, out)) == 0
    return out, printed.getvalue()


@pytest.fixture
def folder(tuned: tuple[Path, str], tmp_path: Path) -> Path:
    """A copy of the tuned folder to run on."""
    return Path(shutil.copytree(tuned[0], tmp_path / "tune"))


def _refused(argv: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `argv`; assert exit 2 with one error line and `folder` left byte for byte; return the line."""
    before = _snapshot(folder)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("histoscan tune: error: ") and "pass --force" in err, err
    assert _snapshot(folder) == before
    return err.strip()


def test_a_new_tune_folder_records_its_study(tuned: tuple[Path, str], store: PatchStore) -> None:
    record = json.loads((tuned[0] / "study.json").read_text())
    assert record["data"] == str(store.path.resolve()) and record["folds"] == 3 and record["use_folds"] == [0]
    assert record["search_space"] == {"lr": ["log", [1e-5, 3e-3]], "dropout": ["float", [0.0, 0.7]]}
    fixed = record["fixed"]
    assert [fixed[k] for k in ("epochs", "batch_size", "limit_batches", "seed")] == [1, 16, 2, 3]
    assert not {"lr", "dropout", "data", "out", "folds", "fold"} & set(fixed)


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ({"use_folds": "0,1"}, "--use-folds 0,1: this tune folder's study used --use-folds 0;"),
        ({"use_folds": "1"}, "--use-folds 1: this tune folder's study used --use-folds 0;"),
        ({"folds": "4"}, "--folds 4: this tune folder's study used --folds 3;"),
        ({"params": "lr"}, "--params lr: this tune folder's study searched lr,dropout;"),
        ({"params": "lr,dropout,weight_decay"}, "this tune folder's study searched lr,dropout;"),
        ({"epochs": "2"}, "--epochs 2: this tune folder's study was run with --epochs 1;"),
        (
            {"limit_batches": None},
            "no --limit-batches: this tune folder's study was run with --limit-batches 2;",
        ),
        ({"augment": "d4,color"}, "--augment d4,color: this tune folder's study was run with --augment d4;"),
        ({"balanced": ""}, "--balanced: this tune folder's study was run with no --balanced;"),
    ],
)
def test_another_study_in_a_tune_folder_is_refused(
    store: PatchStore, folder: Path, changed: dict, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(store.path, folder, **changed)
    if changed.get("balanced") == "":
        argv.remove("")  # a flag
    assert expected in _refused(argv, folder, capsys)


def test_other_data_in_a_tune_folder_is_refused(
    store: PatchStore, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = shutil.copytree(store.path, tmp_path / "other-store")
    err = _refused(_argv(other, folder), folder, capsys)
    assert err == (f"histoscan tune: error: --data {other}: this tune folder's study was run on "
                   f"{store.path.resolve()}; pass --force to start a new study (replacing this one)")  # fmt: skip


def test_a_changed_search_range_is_refused(
    store: PatchStore, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import histoscan.training.tune as tune_module

    monkeypatch.setitem(tune_module.SEARCH_SPACE, "lr", ("log", (1e-4, 1e-2)))
    err = _refused(_argv(store.path, folder), folder, capsys)
    assert "searched lr over log 1e-05..0.003, this histoscan searches log 0.0001..0.01" in err


def test_more_trials_continue_the_same_study(store: PatchStore, folder: Path) -> None:
    first = _trials(folder)
    record = (folder / "study.json").read_bytes()
    assert main(_argv(store.path, folder, trials="2", timeout="600")) == 0
    rows = _trials(folder)
    assert len(rows) == 2 and rows[0] == first[0]  # the first trial kept, one more run
    assert (folder / "study.json").read_bytes() == record


def test_force_starts_a_new_study(store: PatchStore, folder: Path, tmp_path: Path) -> None:
    other = shutil.copytree(store.path, tmp_path / "other-store")
    (folder / "trials" / "0" / "stale.txt").write_text("from the old study")
    assert main([*_argv(other, folder, params="weight_decay"), "--force"]) == 0
    rows = _trials(folder)
    assert len(rows) == 1 and rows[0]["weight_decay"] and not rows[0]["lr"]
    record = json.loads((folder / "study.json").read_text())
    assert record["data"] == str(other.resolve()) and list(record["search_space"]) == ["weight_decay"]
    assert not (folder / "trials" / "0" / "stale.txt").exists()


def test_best_yaml_leaves_the_smoke_cap_out_and_the_output_says_it(tuned: tuple[Path, str]) -> None:
    out, printed = tuned
    assert [row["state"] for row in _trials(out)] == ["COMPLETE"]
    best = TrainConfig.load(out / "best.yaml")
    assert best.limit_batches is None and "limit_batches: null" in (out / "best.yaml").read_text()
    assert best.epochs == 1 and best.batch_size == 16  # the other fixed options are kept
    trial_run = TrainConfig.load(out / "trials" / "0" / "fold-0" / "config.yaml")
    assert trial_run.limit_batches == 2  # the trials themselves ran capped
    assert "at most 2 batches per epoch (--limit-batches 2); best.yaml leaves the cap out" in printed
    assert "(trials ran with --limit-batches 2: a smoke run)" in printed


def test_a_tune_folder_from_before_the_record_is_checked_against_its_trials(
    store: PatchStore,
    folder: Path,
    tuned: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (folder / "study.json").unlink()
    other = shutil.copytree(store.path, tmp_path / "other-store")
    # what the trial runs and the study's parameters show is checked: other data, folds or search space
    assert "was run on" in _refused(_argv(other, folder), folder, capsys)
    assert "--use-folds 1: this tune folder's study used --use-folds 0" in _refused(
        _argv(store.path, folder, use_folds="1"), folder, capsys
    )
    assert "searched lr,dropout" in _refused(_argv(store.path, folder, params="lr"), folder, capsys)
    assert "was run with --epochs 1" in _refused(_argv(store.path, folder, epochs="3"), folder, capsys)
    # the same command is accepted and records the study as a new tune folder would have
    assert main(_argv(store.path, folder)) == 0
    assert "has no study.json (an older histoscan's tune)" in capsys.readouterr().out
    assert (folder / "study.json").read_bytes() == (tuned[0] / "study.json").read_bytes()
    assert _trials(folder) == _trials(tuned[0])  # nothing more to run: --trials 1 was reached


def test_legacy_trials_of_different_studies_are_refused(
    store: PatchStore, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "study.json").unlink()
    mixed = folder / "trials" / "1" / "fold-0"
    shutil.copytree(folder / "trials" / "0" / "fold-0", mixed)
    cfg = TrainConfig.load(mixed / "config.yaml")
    TrainConfig(**{**cfg.to_dict(), "epochs": 5}).save(mixed / "config.yaml")  # the old bug: another --epochs
    assert "were run on different data or options" in _refused(_argv(store.path, folder), folder, capsys)


def test_a_record_without_a_newer_option_means_its_default(store: PatchStore, folder: Path) -> None:
    record = json.loads((folder / "study.json").read_text())
    del record["fixed"]["ema"]  # as if recorded before TrainConfig had `ema` (default 0.0)
    (folder / "study.json").write_text(json.dumps(record))
    assert main(_argv(store.path, folder)) == 0
    assert main(_argv(store.path, folder, ema="0.9")) == 2


def test_parameter_importance_table_and_plot(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    from histoscan.folders import TuneDir
    from histoscan.training.tune import _write_importance

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    # the objective depends on lr alone: fANOVA must give lr nearly all of the variance
    study.optimize(lambda t: -abs(np.log10(t.suggest_float("lr", 1e-5, 1e-2, log=True)) + 3)
                   + 0 * t.suggest_float("dropout", 0.0, 0.7), n_trials=30)  # fmt: skip
    _write_importance(study, TuneDir(tmp_path), optuna)
    with (tmp_path / "importance.csv").open(newline="") as f:
        rows = {r["param"]: float(r["importance"]) for r in csv.DictReader(f)}
    assert (
        set(rows) == {"lr", "dropout"}
        and rows["lr"] > 0.9
        and sum(rows.values()) == pytest.approx(1, abs=1e-3)
    )
    assert (tmp_path / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = tmp_path / "one"
    one.mkdir()
    single = optuna.create_study()
    single.optimize(lambda t: t.suggest_float("lr", 0, 1), n_trials=1)
    _write_importance(single, TuneDir(one), optuna)  # one trial: nothing to apportion, nothing written
    assert not (one / "importance.csv").exists()


# -- a model rejects an option it cannot honour; tune searches only what the model uses (issue 19) --------------


def test_search_space_holds_dropout_only_for_models_that_use_it() -> None:
    from histoscan.training.tune import search_space

    for name in ("simple-cnn", "resnet50-head", "p4m-cnn"):
        assert search_space(name) == list(SEARCH_SPACE), name
    for name in ("resnet18", "resnet10-small", "timm:resnet18"):
        assert search_space(name) == [p for p in SEARCH_SPACE if p != "dropout"], name


def test_tune_refuses_an_option_the_model_ignores(store: PatchStore, tmp_path: Path, capsys) -> None:
    """Searching or fixing dropout for resnet10-small is one error line (exit 2) before anything is written."""
    out = tmp_path / "tune"
    with pytest.raises(
        HistoscanInputError, match="^--params lr,dropout: model resnet10-small has no dropout to search"
    ):
        tune(_cfg(store, model="resnet10-small"), out, n_trials=1, folds=3, params=["lr", "dropout"])
    with pytest.raises(HistoscanInputError, match="^--dropout 0.2: model resnet10-small has no dropout"):
        tune(_cfg(store, model="resnet10-small", dropout=0.2), out, n_trials=1, folds=3, params=["lr"])
    assert not out.exists()
    argv = [
        "tune",
        "--data",
        str(store.path),
        "--out",
        str(out),
        "--model",
        "resnet18",
        "--params",
        "dropout",
    ]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--params dropout: model resnet18 has no dropout to search" in err, err
    assert not out.exists()


def test_train_refuses_dropout_for_a_model_without_one(store: PatchStore, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(store.path), "--out", str(out), "--model", "resnet18", "--dropout", "0.3"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dropout 0.3: model resnet18 has no dropout" in err, err
    assert not out.exists()


def test_a_drawn_plateau_schedule_trains_without_the_studys_warm_up(store: PatchStore) -> None:
    """A study around the default (one-cycle, 1 warm-up epoch) that draws plateau once failed the whole tune:
    plateau has no warm-up, so a trial's config must leave it out, and keep it for the schedules that have one."""
    from histoscan.training.tune import trial_config

    base = _cfg(store, warmup_epochs=2.0)
    assert base.schedule == "onecycle"
    with pytest.raises(HistoscanInputError, match="--warmup-epochs"):
        TrainConfig(**{**base.to_dict(), "schedule": "plateau"})
    plateau = trial_config(base, {"schedule": "plateau", "lr": 1e-4}, out="x")
    assert (plateau.schedule, plateau.warmup_epochs, plateau.lr, plateau.out) == ("plateau", 0.0, 1e-4, "x")
    assert trial_config(base, {"schedule": "cosine"}).warmup_epochs == 2.0
    assert trial_config(_cfg(store), {"schedule": "onecycle"}).warmup_epochs == 1.0
