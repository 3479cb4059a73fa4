"""`histoscan evaluate`: predictions on labelled data -> metrics.json with CIs, plots and report.html."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.data.store import PatchStore, require_labelled
from histoscan.errors import HistoscanInputError
from histoscan.evaluation.report import write_figures, write_report
from histoscan.folders import EvalDir
from histoscan.inference.predict import fitted_column, fitted_summary, skipped_files, store_for_model
from histoscan.inference.predictor import BackendName, Predictor, load_predictor
from histoscan.inference.tta import infer, n_views, run_tta
from histoscan.run import RunDir
from histoscan.scoring import DEFAULT_THRESHOLD
from histoscan.scoring.calibration import calibration_report
from histoscan.scoring.metrics import choose_run_threshold, compute_metrics
from histoscan.stain.domain import domain_warnings
from histoscan.utils.fs import staged_folder
from histoscan.utils.numeric import sigmoid

log = logging.getLogger(__name__)

TEST_SUBSET = "test split of training data"


def _is_training_data(store: PatchStore, run: RunDir | None) -> bool:
    """Whether `store` is the run's training store (same checksum or same folder as RUN/data.json)."""
    info = run.read_data() if run is not None else {}
    if not info:
        return False
    same_sum = bool(info.get("checksum")) and info.get("checksum") == store.meta.get("checksum")
    same_dir = bool(info.get("store")) and Path(info["store"]).resolve() == Path(store.path).resolve()
    return same_sum or same_dir


def rows_to_evaluate(store: PatchStore, runs: RunDir | list[RunDir] | None) -> tuple[np.ndarray, str]:
    """All rows, or only the held-out test rows when `store` is the training data of the model's run(s).

    For an ensemble the rows must be held out by every member: the folds of a cross-validation share none, so
    evaluating a CV ensemble on its own data is refused.
    """
    runs = [runs] if isinstance(runs, RunDir) else list(runs or [])
    seen = [r for r in runs if _is_training_data(store, r)]
    if not seen:
        return np.arange(len(store)), "all"
    splits = [r.read_split() for r in seen]
    rows = np.array(
        [i for i, pid in enumerate(store.ids) if all(s.get(pid) == "test" for s in splits)], dtype=np.int64
    )
    if len(rows) == 0:
        where = (
            f"{seen[0].split_path} has no test rows"
            if len(seen) == 1
            else f"the {len(seen)} members' {RunDir.SPLIT} files hold out no common test rows"
        )
        raise HistoscanInputError(
            f"--data {store.path}: is the model's training data and {where}; "
            "scores on it would be optimistic — evaluate on other data"
        )
    return rows, TEST_SUBSET


def validation_threshold(
    predictor: Predictor, run: RunDir | None, target_sensitivity: float, tta: int, batch_size: int
) -> dict[str, Any]:
    """Threshold choice at `target_sensitivity` on the run's validation split (never on the test data)."""
    info = run.read_data() if run is not None else {}
    if not info.get("store"):
        raise HistoscanInputError(
            f"--target-sensitivity: needs a run folder with {RunDir.DATA} (its validation split)"
        )
    store = PatchStore.open(info["store"])  # raises naming the folder when it is gone
    split = run.read_split()
    rows = np.array([i for i, pid in enumerate(store.ids) if split.get(pid) == "val"], dtype=np.int64)
    if len(rows) == 0:
        raise HistoscanInputError(f"--target-sensitivity: {run.split_path} has no validation rows")
    probs = sigmoid(infer(predictor, store.images, rows, tta, batch_size, desc="validation"))
    return choose_run_threshold(store.labels[rows], probs, target_sensitivity)


def default_out_dir(predictor: Predictor, data: str | Path) -> Path:
    """RUN/eval-<data name>/ (beside the weights file for a bare checkpoint or .onnx)."""
    card = predictor.card
    return RunDir(card.run_dir if card.run_dir else Path(card.weights).parent).eval_dir(data)


def evaluate(
    model: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    tta: int | None = None,
    batch_size: int = 256,
    target_sensitivity: float | None = None,
    backend: BackendName = "auto",
    n_boot: int = 1000,
    force: bool = False,
    skip_bad: bool = False,
    echo: Callable[[str], None] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a trained model on labelled data and write the report.

    The decision threshold is the run's (threshold.json, chosen on the validation split) applied unchanged;
    DEFAULT_THRESHOLD (0.5) when the run has none (said in the report). With `target_sensitivity`, the
    threshold is re-chosen on the run's validation split at that sensitivity — never on the data evaluated.
    If DATA is the run's own training store, only its held-out test rows are scored.

    Args:
        model: run folder, checkpoint or .onnx export.
        data: labelled source or STORE (both classes needed: AUC and sensitivity/specificity need both).
        out: output folder (default RUN/eval-<data name>/); a non-empty one needs `force`.
        tta: 0, 4 or 8 dihedral views (logits averaged); None: the run's recorded `tta`.
        batch_size: patches per forward (times the TTA views).
        target_sensitivity: optional operating point for the threshold, chosen on validation data.
        backend: "auto" (from MODEL), "torch" or "onnx".
        n_boot: bootstrap resamples for the 95 % CIs.
        force: overwrite a non-empty output folder.
        skip_bad: skip unreadable images (counted in the report) instead of stopping.
        echo: receives one start line (model, data, patches scored, TTA) before inference.
        device: "auto" (a GPU when the backend can use one), "cpu", "cuda" or "cuda:N", the same for torch and
            ONNX models (:func:`histoscan.inference.predictor.load_predictor`).

    Returns:
        The metrics written to metrics.json (compute_metrics keys plus context: subset, model, data, ...,
        `warnings`: one line each when the data's µm/px or colour lies far from the training data's, also
        in `notes` and the report; `colour_distance`).
    """
    if tta is not None:
        n_views(tta)
    if n_boot < 0:
        raise HistoscanInputError(f"--n-boot {n_boot}: must be 0 or more")
    predictor = load_predictor(model, backend, device)
    tta = run_tta(predictor, tta)
    card = predictor.card
    out_dir = Path(out).expanduser() if out is not None else default_out_dir(predictor, data)
    with staged_folder(out_dir, force) as tmp:
        m = _evaluate_into(tmp, predictor, data, tta, batch_size, target_sensitivity, n_boot, skip_bad, echo)
    m["out"] = str(out_dir)
    log.debug("evaluation of %s written to %s", card.model, out_dir)
    return m


def _evaluate_into(
    out_dir: Path,
    predictor: Predictor,
    data: str | Path,
    tta: int,
    batch_size: int,
    target_sensitivity: float | None,
    n_boot: int,
    skip_bad: bool,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    card = predictor.card
    run = RunDir(card.run_dir) if card.run_dir else None
    store = store_for_model(data, card, "labelled", skip_bad)
    require_labelled(store, both_classes=False)
    rows, subset = rows_to_evaluate(store, predictor.training_runs())
    y = store.labels[rows].astype(np.int64)
    if len(np.unique(y)) < 2:
        only = "tumour" if y.size and y[0] == 1 else "normal"
        raise HistoscanInputError(
            f"--data {data}: all {len(y)} evaluated patches are {only}; AUC, sensitivity and specificity need "
            "both classes (use `histoscan predict` for probabilities)"
        )
    notes = []
    if subset == TEST_SUBSET:
        notes.append(
            f"DATA is this run's training data: only its {len(rows)} held-out test patches are scored."
        )
    threshold, source = card.threshold, card.threshold_source
    if target_sensitivity is not None:
        chosen = validation_threshold(predictor, run, target_sensitivity, tta, batch_size)
        threshold = chosen["threshold"]
        source = f"validation split at target sensitivity {target_sensitivity} ({chosen['method']})"
    elif source.startswith("default"):
        notes.append(f"The run has no {RunDir.THRESHOLD}: the default threshold {DEFAULT_THRESHOLD:g} is used.")
    if echo is not None:
        echo(
            f"evaluate: {card.describe()} on {data}: {len(rows)} patches ({int(y.sum())} tumour; {subset}), "
            f"TTA {n_views(tta)} view(s)"
        )
    logits = infer(predictor, store.images, rows, tta, batch_size, desc="evaluate")
    probs = sigmoid(logits)
    temperature = float(getattr(card, "temperature", 1.0))  # applied inside the predictor already
    calibration = calibration_report(y, logits * temperature, temperature)
    stain_line = predictor.stain_note("evaluated patches (TTA views counted)")
    if stain_line:
        notes.append(stain_line)
    ids = [store.ids[i] for i in rows]
    groups = [store.groups[i] for i in rows]
    grouped = all(groups)
    if not grouped and any(groups):
        notes.append("Some patches have no patient/slide: the bootstrap resamples patches, not groups.")
    m = compute_metrics(y, probs, threshold, groups if grouped else None, n_boot=n_boot)
    if grouped and len(set(groups)) < 10:
        notes.append(
            f"Only {len(set(groups))} patients/slides: the group-level confidence intervals are rough."
        )
    n_skipped, skipped = skipped_files(store)
    if n_skipped:
        notes.append(f"{n_skipped} unreadable images were skipped (--skip-bad), e.g. {skipped[0]['source']}.")
    fitted = fitted_column(store, rows)
    fit_line = fitted_summary(fitted, store.size)
    if fit_line:
        notes.append(fit_line[0].upper() + fit_line[1:] + ".")
    warnings, colour_distance = domain_warnings(predictor, store.meta.get("mpp"), store.images, rows)
    notes += [f"Warning: {w}" for w in warnings]
    m.update(
        subset=subset,
        data=str(data),
        store=str(store.path),
        model=card.model,
        checkpoint=card.weights,
        run=card.run_dir,
        backend=card.backend,
        tta=n_views(tta),
        threshold_source=source,
        calibration=calibration,
        n_groups=len(set(groups)) if grouped else 0,
        n_skipped=n_skipped,
        n_fitted=sum(1 for f in fitted if f),
        notes=notes,
        warnings=warnings,
        colour_distance=colour_distance,
    )
    folder = EvalDir(out_dir)
    folder.write_predictions(ids, groups, y, probs, fitted)
    folder.write_metrics(m)
    p_before = sigmoid(logits * temperature) if temperature != 1.0 else None
    figures = write_figures(out_dir, y, probs, m, run, p_before)
    config = card.config.to_dict() if card.config is not None else None
    write_report(
        out_dir,
        m,
        y,
        probs,
        ids,
        groups,
        lambda pos: store.images[rows[np.asarray(pos)]],
        config,
        notes,
        figures,
    )
    return m
