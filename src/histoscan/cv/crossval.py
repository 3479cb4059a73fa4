"""`histoscan cv`: patient-grouped k-fold cross-validation — one run per fold, each evaluated on its held-out
fold, predictions pooled into one metrics.json with group-bootstrap CIs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.evaluation.evaluate import evaluate
from histoscan.folders import CvDir, EvalDir, RunDir
from histoscan.inference.card import threshold_fields
from histoscan.scoring import DEFAULT_THRESHOLD
from histoscan.scoring.metrics import compute_metrics
from histoscan.training.progress import Echo
from histoscan.training.train import train
from histoscan.utils.fs import guard_output


def crossval(
    config: TrainConfig,
    folds: int = 5,
    tta: int | None = None,
    force: bool = False,
    echo: Echo | None = None,
    resume: bool = False,
    use_folds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train and evaluate `folds` runs in OUT/fold-<i>; write OUT/cv.json and OUT/predictions.csv.

    Each fold's threshold is its own run's (chosen on that run's validation patients); the pooled metrics use the
    pooled per-patch decisions, so no threshold is ever fitted on test patients. `echo` receives a line per
    fold start and result (and the folds' training lines). With `resume`, folds already trained and evaluated
    with the same configuration are kept (a stopped cross-validation continues where it stopped). `use_folds`
    runs only those folds of the `folds`-fold split (a cheaper screen; pooled figures cover their patches only).
    """
    config.validate()
    tta = config.tta if tta is None else tta  # the run's own scoring views unless the caller asks for others
    if folds < 2:
        raise HistoscanInputError(f"--folds {folds}: must be at least 2")
    chosen = list(range(folds)) if use_folds is None else sorted(set(use_folds))
    if not chosen or any(not 0 <= k < folds for k in chosen):
        raise HistoscanInputError(f"--use-folds {list(use_folds or [])}: need fold numbers in 0..{folds - 1}")
    out = Path(config.out).expanduser() if resume else guard_output(config.out, force, "folder", "--out")
    out.mkdir(parents=True, exist_ok=True)
    cv = CvDir(out)
    rows: list[dict[str, str]] = []
    per_fold: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for k in chosen:
        cfg = dataclasses.replace(config, out=str(cv.fold_path(k)), folds=folds, fold=k)
        t = time.perf_counter()
        run, eval_dir = Path(cfg.out), EvalDir(RunDir(cfg.out).eval_dir(config.data))
        if resume and _fold_done(run, eval_dir, cfg, tta):
            metrics = eval_dir.read_metrics()
            seconds = sum(float(r.get("seconds") or 0) for r in RunDir(run).read_metrics())
            if echo is not None:
                echo(f"fold {k + 1}/{folds}: done before, kept ({run})")
        else:
            if echo is not None:
                echo(f"fold {k + 1}/{folds}: training {cfg.out}")
            run = train(cfg, force=True, echo=echo)
            metrics = evaluate(run, config.data, out=eval_dir.path, tta=tta, force=True)
            seconds = time.perf_counter() - t
        if echo is not None:
            echo(
                f"fold {k + 1}/{folds}: AUC {_fmt(metrics['auc'])}  balanced accuracy "
                f"{_fmt(metrics['balanced_accuracy'])}  F1 {_fmt(metrics['f1'])}  ({metrics['n']} patches, "
                f"{seconds / 60:.1f} min)"
            )
        threshold = threshold_fields(RunDir(run).read_threshold())[0]
        fold_rows = eval_dir.read_predictions()
        for r in fold_rows:
            r["fold"], r["decision"] = str(k), str(int(float(r["probability"]) >= threshold))
        rows += fold_rows
        per_fold.append(
            {
                "fold": k,
                "seconds": round(seconds, 1),
                "auc": metrics["auc"],
                "balanced_accuracy": metrics["balanced_accuracy"],
                "f1": metrics["f1"],
                "n": metrics["n"],
            }
        )
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    groups = [r["group"] for r in rows]
    groups = groups if all(groups) else None
    # ranking metrics (AUC, PR-AUC, Brier, ECE) with CIs; the decisions are the folds' own, below
    pooled = compute_metrics(y, p, DEFAULT_THRESHOLD, groups=groups)
    _pooled_decisions(pooled, y, np.array([int(r["decision"]) for r in rows]), groups)
    result = {
        "folds": folds,
        "use_folds": chosen,
        "tta": tta,
        "seconds": round(time.perf_counter() - t0, 1),
        "config": config.to_dict(),
        "pooled": pooled,
        "per_fold": per_fold,
    }
    cv.write_summary(result)
    cv.write_predictions(rows)
    return result


def _fold_done(run: Path, eval_dir: EvalDir, cfg: TrainConfig, tta: int) -> bool:
    """Whether fold `run` was trained with `cfg` (same fields but `out`) and evaluated with `tta` views."""
    if not eval_dir.complete():
        return False
    try:
        saved = RunDir(run).read_config()
        views = eval_dir.read_metrics().get("tta")
    except (HistoscanInputError, ValueError):
        return False
    same = {**saved.to_dict(), "out": ""} == {**cfg.to_dict(), "out": ""}
    return same and views == max(tta, 1)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pooled_decisions(pooled: dict[str, Any], y: np.ndarray, d: np.ndarray, groups: list[str] | None) -> None:
    """Replace the threshold-dependent entries of `pooled` by those of the per-fold decisions d (0/1), with CIs."""
    m = compute_metrics(y, d.astype(float), DEFAULT_THRESHOLD, groups=groups)
    for k in ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "confusion"):
        if k in m:
            pooled[k] = m[k]
    for k in ("balanced_accuracy", "f1"):
        pooled["ci95"][k] = m["ci95"][k]
    pooled["threshold"] = "per fold (chosen on each run's validation patients)"
