"""`histoscan tune`: hyper-parameter search with Optuna over grouped CV folds, resumable from its SQLite study.

The objective of a trial is the mean held-out AUC over the chosen folds of a grouped k-fold split (the same
folds as `histoscan cv`); bad trials are pruned on their first fold by Optuna's Lightning integration (median
rule over the trials so far, epoch by epoch). The study lives in OUT/study.db, so a tune that was killed
continues where it stopped when the same command runs again: its unfinished trial is marked failed and its
parameters are tried again first. OUT/trials.csv is the results table and OUT/best.yaml the best configuration,
which `histoscan train --config OUT/best.yaml` accepts.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.config import TrainConfig
from histoscan.data.store import resolve_store
from histoscan.errors import HistoscanInputError
from histoscan.evaluation.metrics import compute_metrics
from histoscan.inference.predictor import load_torch_predictor
from histoscan.inference.tta import infer
from histoscan.run import RunDir
from histoscan.training.progress import Echo
from histoscan.training.train import train
from histoscan.utils.fs import atomic_path, guard_output
from histoscan.utils.numeric import sigmoid

# The search space, declared here and only here: field -> (kind, arguments). Kinds: "log" (log-uniform float
# between two bounds), "float" (uniform), "choice" (one of a list). Augmentation choices are comma lists.
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "lr": ("log", (1e-5, 3e-3)),
    "weight_decay": ("log", (1e-6, 1e-2)),
    "dropout": ("float", (0.0, 0.7)),
    "batch_size": ("choice", [32, 64, 128]),
    "augment": ("choice", ["d4", "d4,color", "d4,hed", "d4,affine"]),
}
STUDY = "histoscan"


def _optuna() -> Any:
    try:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback  # noqa: F401
    except ImportError:
        raise HistoscanInputError(
            "tune: needs Optuna and its Lightning integration (pip install 'histoscan[tune]')"
        ) from None
    return optuna


def suggest(trial: Any, params: Sequence[str]) -> dict[str, Any]:
    """Values for `params` drawn from SEARCH_SPACE by an Optuna trial (augment as a list of ops)."""
    values: dict[str, Any] = {}
    for name in params:
        kind, arg = SEARCH_SPACE[name]
        if kind == "log":
            values[name] = trial.suggest_float(name, *arg, log=True)
        elif kind == "float":
            values[name] = trial.suggest_float(name, *arg)
        else:
            values[name] = trial.suggest_categorical(name, arg)
    if isinstance(values.get("augment"), str):
        values["augment"] = values["augment"].split(",")
    return values


def _fold_auc(run: Path, store: Any) -> float:
    """AUC of a fold's run on its held-out (test) rows."""
    split = RunDir(run).read_split()
    rows = np.array([i for i, pid in enumerate(store.ids) if split.get(pid) == "test"], dtype=np.int64)
    probs = sigmoid(infer(load_torch_predictor(run), store.images, rows, desc="fold test"))
    auc = compute_metrics(store.labels[rows].astype(int), probs, 0.5, n_boot=0)["auc"]
    return float("nan") if auc is None else float(auc)


def _recover(study: Any, optuna: Any) -> tuple[int, int]:
    """Fail the trials a killed tune left RUNNING and enqueue their parameters again.

    Returns (failed, queued): a trial killed before it drew its parameters has nothing to try again.
    """
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    queued = 0
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
            queued += 1
    return len(stale), queued


def tune(
    config: TrainConfig,
    out: str | Path,
    n_trials: int = 20,
    folds: int = 5,
    use_folds: Sequence[int] = (0,),
    params: Sequence[str] | None = None,
    timeout: float | None = None,
    force: bool = False,
    echo: Echo | None = None,
    pruner: Any = None,
) -> dict[str, Any]:
    """Search the hyper-parameters in SEARCH_SPACE (or `params` of it) around `config`; resumable.

    Args:
        config: the fixed part of every trial (data, model, epochs, ...); searched fields are replaced.
        out: tune folder (OUT/study.db, OUT/trials.csv, OUT/best.yaml, OUT/trials/<n>/fold-<k>/ runs). An
            existing tune folder is continued; `force` starts afresh.
        n_trials: finished trials (complete or pruned) the study should hold in the end.
        folds: grouped folds of the split; `use_folds` are the ones each trial trains and scores.
        params: names of SEARCH_SPACE to search (default all).
        timeout: stop starting new trials after this many seconds.
        echo: receives one line per trial.
        pruner: an Optuna pruner (default: median rule after 2 trials, from the second epoch).

    Returns:
        {"best_value", "best_params", "best_config", "n_trials", "out"}.
    """
    optuna = _optuna()
    from optuna_integration import PyTorchLightningPruningCallback

    config.validate()
    params = list(params or SEARCH_SPACE)
    unknown = [p for p in params if p not in SEARCH_SPACE]
    if unknown:
        raise HistoscanInputError(
            f"--params {','.join(params)}: unknown {unknown[0]} (choose from {', '.join(SEARCH_SPACE)})"
        )
    if n_trials < 1 or folds < 2 or not use_folds or any(not 0 <= k < folds for k in use_folds):
        raise HistoscanInputError(f"--trials {n_trials} / --folds {folds} / --use-folds {list(use_folds)}: need "
                                  f"trials >= 1, folds >= 2 and fold numbers in 0..{folds - 1}")  # fmt: skip
    out = Path(out).expanduser()
    db = out / "study.db"
    if force or not db.is_file():
        guard_output(out, force, "folder", "--out")
        if force and out.exists():
            import shutil

            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{db.resolve()}",
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    failed, queued = _recover(study, optuna)
    if echo is not None and failed:
        again = (
            "and queued again"
            if queued == failed
            else f"({queued} queued again; the others had no parameters yet)"
        )
        echo(f"tune: continuing {db}: {failed} unfinished trial(s) marked failed {again}")
    store = resolve_store(config.data, image_size=config.image_size, fit=config.fit, skip_bad=config.skip_bad)

    def objective(trial: Any) -> float:
        values = suggest(trial, params)
        t0, aucs = time.perf_counter(), []
        for i, k in enumerate(use_folds):
            cfg = dataclasses.replace(config, **values, out=str(out / "trials" / f"{trial.number}" / f"fold-{k}"),
                                      folds=folds, fold=k)  # fmt: skip
            cbs = [PyTorchLightningPruningCallback(trial, monitor=config.monitor)] if i == 0 else []
            run = train(cfg, force=True, callbacks=cbs)
            aucs.append(_fold_auc(run, store))
        trial.set_user_attr("fold_auc", aucs)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        return float(np.mean(aucs))

    def report(study: Any, trial: Any) -> None:
        _write_results(study, out, config, optuna)
        if echo is not None:
            shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            value = f"mean AUC {trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
            echo(f"trial {trial.number + 1}/{n_trials}: {shown} -> {value}")

    done = sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.get_trials(deepcopy=False))
    todo = max(0, n_trials - done)
    if echo is not None:
        echo(
            f"tune: {todo} trial(s) to run ({done} done) over folds {list(use_folds)} of {folds}; study {db}"
        )
    if todo:
        study.optimize(objective, n_trials=todo, timeout=timeout, callbacks=[report])
    _write_results(study, out, config, optuna)
    best = _best(study, optuna)
    return {
        "best_value": None if best is None else best.value,
        "best_params": {} if best is None else dict(best.params),
        "best_config": str(out / "best.yaml") if best is not None else None,
        "n_trials": len(study.trials),
        "out": str(out),
    }


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _best(study: Any, optuna: Any) -> Any:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(done, key=lambda t: t.value) if done else None


def _write_results(study: Any, out: Path, config: TrainConfig, optuna: Any) -> None:
    """OUT/trials.csv (every trial) and OUT/best.yaml (the best complete trial's full TrainConfig)."""
    names = list(SEARCH_SPACE)
    with atomic_path(out / "trials.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", "mean_auc", "fold_auc", "seconds", *names])
        for t in study.trials:
            w.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}",
                        " ".join(f"{a:.4f}" for a in t.user_attrs.get("fold_auc", [])), t.user_attrs.get("seconds", ""),
                        *[t.params.get(n, "") for n in names]])  # fmt: skip
    best = _best(study, optuna)
    if best is not None:
        values = dict(best.params)
        if isinstance(values.get("augment"), str):
            values["augment"] = values["augment"].split(",")
        cfg = dataclasses.replace(config, **values, out="", folds=None, fold=None)
        cfg.save(out / "best.yaml")
