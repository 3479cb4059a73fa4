"""`histoscan tune`: hyper-parameter search with Optuna over grouped CV folds, resumable from its SQLite study.

The objective of a trial is the mean held-out AUC over the chosen folds of a grouped k-fold split (the same
folds as `histoscan cv`); bad trials are pruned on their first fold by Optuna's Lightning integration (median
rule over the trials so far, epoch by epoch). The study lives in OUT/study.db, so a tune that was killed
continues where it stopped when the same command runs again: its unfinished trial is marked failed and its
parameters are tried again first. A tune folder continues only its own study: OUT/study.json records the data,
folds, search space and fixed options it was created with, and a command that differs in any of them (all but
--trials and --timeout) is refused unless --force starts a new study. OUT/trials.csv is the results table and
OUT/best.yaml the best configuration, which `histoscan train --config OUT/best.yaml` accepts (without the
smoke-run cap --limit-batches, which a tune's trials may use but a real run must not inherit).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.config import TrainConfig, option_name
from histoscan.data.store import resolve_store
from histoscan.errors import HistoscanInputError
from histoscan.folders import RunDir, TuneDir
from histoscan.inference.predictor import load_torch_predictor
from histoscan.inference.tta import infer
from histoscan.models import OPTIONS, check_model_options, model_options
from histoscan.models.classifier import model_kwargs
from histoscan.scoring import DEFAULT_THRESHOLD
from histoscan.scoring.metrics import compute_metrics
from histoscan.training.progress import Echo
from histoscan.training.train import train
from histoscan.utils.fs import atomic_path, atomic_write_text, guard_output
from histoscan.utils.numeric import sigmoid

# The search space, declared here and only here: field -> (kind, arguments). Kinds: "log" (log-uniform float
# between two bounds), "float" (uniform), "int" (uniform integer), "choice" (one of a list). Augmentation
# choices are comma lists.
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "epochs": ("int", (6, 30)),  # with --patience >= 6 early stopping does not cut a one-cycle short
    "schedule": ("choice", ["onecycle", "plateau", "cosine"]),
    "lr": ("log", (1e-5, 3e-3)),
    "weight_decay": ("log", (1e-6, 1e-2)),
    "dropout": ("float", (0.0, 0.7)),
    "batch_size": ("choice", [32, 64, 128]),
    "augment": ("choice", ["d4", "d4,color", "d4,hed", "d4,affine"]),
}


def search_space(model: str) -> list[str]:
    """The fields of SEARCH_SPACE a study of `model` searches by default: a model option (dropout) only where
    the model honours it (:func:`histoscan.models.model_options`); the training options always."""
    honoured = model_options(model)
    return [p for p in SEARCH_SPACE if p not in OPTIONS or p in honoured]


STUDY = "histoscan"
_NOT_FIXED = ("data", "out", "folds", "fold")  # TrainConfig fields that are no fixed option of a study
_FORCE = "pass --force to start a new study (replacing this one)"


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
        elif kind == "int":
            values[name] = trial.suggest_int(name, *arg)
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
    auc = compute_metrics(store.labels[rows].astype(int), probs, DEFAULT_THRESHOLD, n_boot=0)["auc"]
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


def trial_config(config: TrainConfig, values: dict[str, Any], **fixed: Any) -> TrainConfig:
    """`config` with a trial's `values` (and `fixed` fields) in. A drawn schedule that has no warm-up (plateau)
    drops the study's warm-up, which only the cosine and one-cycle schedules honour."""
    if values.get("schedule") == "plateau" and "warmup_epochs" not in values:
        fixed = {"warmup_epochs": 0.0, **fixed}
    return dataclasses.replace(config, **values, **fixed)


def study_identity(config: TrainConfig, folds: int, use_folds: Sequence[int], params: Sequence[str]) -> dict:
    """What makes a study: data, folds, use_folds, the searched fields with their ranges and the fixed options."""
    fixed = {k: v for k, v in config.to_dict().items() if k not in (*_NOT_FIXED, *params)}
    space = {p: [SEARCH_SPACE[p][0], list(SEARCH_SPACE[p][1])] for p in params}
    identity = {"data": _data_id(config.data), "folds": folds, "use_folds": list(use_folds), "search_space": space,
                "fixed": fixed}  # fmt: skip
    return json.loads(json.dumps(identity))  # as it reads back from study.json (lists, not tuples)


def _data_id(data: str) -> str:
    p = Path(data).expanduser()
    return str(p.resolve()) if p.exists() else str(data)


def _read_record(path: Path) -> dict:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HistoscanInputError(f"{path}: unreadable study record ({e}); {_FORCE}") from None
    if not isinstance(old, dict) or not {"data", "folds", "use_folds", "search_space", "fixed"} <= set(old):
        raise HistoscanInputError(f"{path}: not a tune's study record; {_FORCE}")
    return old


def _legacy_identity(out: Path, db: Path, new: dict) -> dict:
    """The study of a tune folder from before study.json, as far as its trials show it (else as `new`).

    Searched fields and ranges come from the study's parameters, data, folds and fixed options from the trial
    runs' config.yaml; the fold numbers of those runs must be among `new`'s use_folds (their order is unknown).
    """
    optuna = _optuna()
    try:
        with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as con:
            rows = con.execute("select distinct param_name, distribution_json from trial_params").fetchall()
    except sqlite3.Error as e:
        raise HistoscanInputError(f"{db}: not an Optuna study ({e}); {_FORCE}") from None
    space: dict[str, list] = {}
    for name, text in rows:
        d = optuna.distributions.json_to_distribution(text)
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            space[name] = ["choice", list(d.choices)]
        else:
            space[name] = ["log" if getattr(d, "log", False) else "float", [d.low, d.high]]
    space = json.loads(json.dumps(space)) or new["search_space"]
    seen, used = set(), set()
    for path in TuneDir(out).trial_configs():
        cfg = TrainConfig.load(path).to_dict()
        fixed = {k: v for k, v in cfg.items() if k not in (*_NOT_FIXED, *space)}
        seen.add(json.dumps([_data_id(cfg["data"]), cfg["folds"], fixed]))
        used.add(cfg["fold"])
    if len(seen) > 1:
        raise HistoscanInputError(f"--out {out}: the trials of this tune folder (from before {TuneDir.RECORD}) were "
                                  f"run on different data or options; {_FORCE}")  # fmt: skip
    data, folds, fixed = json.loads(seen.pop()) if seen else (new["data"], new["folds"], new["fixed"])
    use_folds = new["use_folds"] if used <= set(new["use_folds"]) else sorted(used)
    return {"data": data, "folds": folds, "use_folds": use_folds, "search_space": space, "fixed": fixed}


def _difference(old: dict, new: dict, config: TrainConfig, params: Sequence[str]) -> str | None:
    """The first way the study asked for (`new`) differs from the tune folder's (`old`), as an error line."""
    ours = "this tune folder's study"
    if old["data"] != new["data"]:
        return f"--data {config.data}: {ours} was run on {old['data']}; {_FORCE}"
    if old["folds"] != new["folds"]:
        return f"--folds {new['folds']}: {ours} used --folds {old['folds']}; {_FORCE}"
    if old["use_folds"] != new["use_folds"]:
        used = ",".join(map(str, old["use_folds"]))
        return f"--use-folds {','.join(map(str, new['use_folds']))}: {ours} used --use-folds {used}; {_FORCE}"
    was, now = old["search_space"], new["search_space"]
    if set(was) != set(now):
        return f"--params {','.join(params)}: {ours} searched {','.join(was)}; {_FORCE}"
    for name in now:
        if was[name] != now[name]:
            return (f"--params {','.join(params)}: {ours} searched {name} over {_span(was[name])}, this histoscan "
                    f"searches {_span(now[name])}; {_FORCE}")  # fmt: skip
    # a field added to TrainConfig since the study was recorded had its default then
    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                for f in dataclasses.fields(TrainConfig)}  # fmt: skip
    for name in new["fixed"]:
        before, after = old["fixed"].get(name, defaults[name]), new["fixed"][name]
        if before != after:
            return f"{_given(name, after)}: {ours} was run with {_given(name, before)}; {_FORCE}"
    return None


def _span(entry: list) -> str:
    kind, arg = entry
    return f"{{{', '.join(map(str, arg))}}}" if kind == "choice" else f"{kind} {arg[0]:g}..{arg[1]:g}"


def _given(name: str, value: Any) -> str:
    """An option as the user would give it: --epochs 2, --augment d4,color, --balanced, no --limit-batches."""
    opt = option_name(name)
    if value is None or value is False:
        return f"no {opt}"
    if value is True:
        return opt
    if isinstance(value, dict):  # a stain normaliser: told apart by a digest of its parameters
        digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]
        return f"{opt} <normaliser {digest}>"
    if isinstance(value, list):
        return f"{opt} {','.join(map(str, value)) or 'none'}"
    return f"{opt} {value}"


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
        out: tune folder (OUT/study.json, OUT/study.db, OUT/trials.csv, OUT/best.yaml, OUT/trials/<n>/fold-<k>/
            runs). An existing tune folder of the same study is continued; `force` starts a new study.
        n_trials: finished trials (complete or pruned) the study should hold in the end.
        folds: grouped folds of the split; `use_folds` are the ones each trial trains and scores.
        params: names of SEARCH_SPACE to search (default :func:`search_space` of the model: all it uses).
        timeout: stop starting new trials after this many seconds.
        echo: receives one line per trial.
        pruner: an Optuna pruner (default: median rule after 2 trials, from the second epoch).

    Returns:
        {"best_value", "best_params", "best_config", "n_trials", "out", "limit_batches"} (the trials' cap).

    Raises:
        HistoscanInputError: bad arguments, or an existing tune folder whose study differs from this call in
            data, folds, use_folds, searched fields or fixed options (without `force`; OUT is left as it was).
    """
    optuna = _optuna()
    from optuna_integration import PyTorchLightningPruningCallback

    config.validate()
    check_model_options(config.model, **model_kwargs(config))
    params = list(params or search_space(config.model))
    unknown = [p for p in params if p not in SEARCH_SPACE]
    if unknown:
        raise HistoscanInputError(
            f"--params {','.join(params)}: unknown {unknown[0]} (choose from {', '.join(SEARCH_SPACE)})"
        )
    unused = [p for p in params if p not in search_space(config.model)]
    if unused:
        raise HistoscanInputError(
            f"--params {','.join(params)}: model {config.model} has no {unused[0]} to search "
            f"(it uses {', '.join(search_space(config.model))})"
        )
    if n_trials < 1 or folds < 2 or not use_folds or any(not 0 <= k < folds for k in use_folds):
        raise HistoscanInputError(f"--trials {n_trials} / --folds {folds} / --use-folds {list(use_folds)}: need "
                                  f"trials >= 1, folds >= 2 and fold numbers in 0..{folds - 1}")  # fmt: skip
    out = Path(out).expanduser()
    folder = TuneDir(out)
    db, record = folder.db_path, folder.record_path
    identity = study_identity(config, folds, use_folds, params)
    existing = not force and (db.is_file() or record.is_file())
    if existing:  # continue only the same study; checked before anything in OUT changes
        old = _read_record(record) if record.is_file() else _legacy_identity(out, db, identity)
        difference = _difference(old, identity, config, params)
        if difference:
            raise HistoscanInputError(difference)
    else:
        guard_output(out, force, "folder", "--out")
    store = resolve_store(config.data, image_size=config.image_size, fit=config.fit, skip_bad=config.skip_bad)
    if force and out.exists():
        shutil.rmtree(out)
    if not record.is_file():  # a new study, or one from before study.json that matched this command
        if existing and echo is not None:
            echo(f"tune: {out} has no {TuneDir.RECORD} (an older histoscan's tune): its trials match this command; "
                 f"recorded the study in {record}")  # fmt: skip
        atomic_write_text(record, json.dumps(identity, indent=1) + "\n")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{db.resolve()}",
        direction="maximize",
        load_if_exists=True,
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    # seeded by the history too: a sampler seeded alike in each part of a resumed study drew the first part's
    # points again (TPE's random start-up trials come from its seed alone)
    study.sampler = optuna.samplers.TPESampler(seed=config.seed + len(study.trials))
    failed, queued = _recover(study, optuna)
    if echo is not None and failed:
        again = (
            "and queued again"
            if queued == failed
            else f"({queued} queued again; the others had no parameters yet)"
        )
        echo(f"tune: continuing {db}: {failed} unfinished trial(s) marked failed {again}")
    if echo is not None and config.limit_batches:
        echo(f"tune: smoke run: every trial trains at most {config.limit_batches} batches per epoch "
             f"(--limit-batches {config.limit_batches}); {TuneDir.BEST} leaves the cap out")  # fmt: skip

    def objective(trial: Any) -> float:
        values = suggest(trial, params)
        t0, aucs = time.perf_counter(), []
        for i, k in enumerate(use_folds):
            cfg = trial_config(
                config, values, out=str(folder.trial_fold(trial.number, k)), folds=folds, fold=k
            )
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
        "best_config": str(folder.best_path) if best is not None else None,
        "n_trials": len(study.trials),
        "out": str(out),
        "limit_batches": config.limit_batches,
    }


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _best(study: Any, optuna: Any) -> Any:
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(done, key=lambda t: t.value) if done else None


def _write_results(study: Any, out: Path, config: TrainConfig, optuna: Any) -> None:
    """OUT/trials.csv (every trial) and OUT/best.yaml (the best complete trial's full TrainConfig)."""
    names = list(SEARCH_SPACE)
    folder = TuneDir(out)
    with atomic_path(folder.trials_csv) as tmp, tmp.open("w", newline="") as f:
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
        # a smoke-run cap of the trials is no part of the configuration a real run should train with
        cfg = trial_config(config, values, out="", folds=None, fold=None, limit_batches=None)
        cfg.save(folder.best_path)
    _write_importance(study, folder, optuna)


def _write_importance(study: Any, folder: TuneDir, optuna: Any) -> None:
    """OUT/importance.csv and OUT/importance.png: each searched parameter's share of the objective's variance
    over the completed trials (Optuna's fANOVA); needs two completed trials that differ."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len({tuple(sorted(t.params.items())) for t in done}) < 2:
        return
    try:
        scores = optuna.importance.get_param_importances(study)
    except (ImportError, RuntimeError, ValueError):  # scikit-learn missing, or a space fANOVA cannot split
        return
    with atomic_path(folder.importance_csv) as tmp, tmp.open("w", newline="") as f:
        csv.writer(f).writerows([["param", "importance"], *[[k, f"{v:.4f}"] for k, v in scores.items()]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)[::-1]
    fig, ax = plt.subplots(figsize=(5, 0.4 * len(names) + 1.2))
    ax.barh(names, [scores[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance (fANOVA share of mean-AUC variance)")
    ax.set_title(f"{len(done)} completed trials")
    fig.tight_layout()
    with atomic_path(folder.importance_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
