"""`histoscan evaluate`: predictions on labelled data -> metrics.json with CIs, plots and report.html."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoscan.data.splits import read_split
from histoscan.data.store import PatchStore, require_labelled
from histoscan.errors import HistoscanInputError
from histoscan.evaluation.metrics import choose_run_threshold, compute_metrics
from histoscan.inference.predict import Backend, infer, load_data, make_backend, n_views, sigmoid
from histoscan.evaluation.report import write_figures, write_report

log = logging.getLogger(__name__)

TEST_SUBSET = "test split of training data"


def _read_split(run_dir: Path) -> dict[str, str]:
    path = run_dir / "split.csv"
    return read_split(path) if path.is_file() else {}


def _is_training_data(store: PatchStore, run_dir: Path | None) -> bool:
    """Whether `store` is the run's training store (same checksum or same folder as RUN/data.json)."""
    if run_dir is None or not (run_dir / "data.json").is_file():
        return False
    info = json.loads((run_dir / "data.json").read_text())
    same_sum = bool(info.get("checksum")) and info.get("checksum") == store.meta.get("checksum")
    same_dir = bool(info.get("store")) and Path(info["store"]).resolve() == Path(store.path).resolve()
    return same_sum or same_dir


def rows_to_evaluate(store: PatchStore, run_dir: Path | None) -> tuple[np.ndarray, str]:
    """All rows, or only the run's held-out test rows when `store` is the run's own training data."""
    if not _is_training_data(store, run_dir):
        return np.arange(len(store)), "all"
    split = _read_split(run_dir)
    rows = np.array([i for i, pid in enumerate(store.ids) if split.get(pid) == "test"], dtype=np.int64)
    if len(rows) == 0:
        raise HistoscanInputError(
            f"--data {store.path}: is the run's training data and {run_dir / 'split.csv'} has no test rows; "
            "scores on it would be optimistic — evaluate on other data"
        )
    return rows, TEST_SUBSET


def validation_threshold(
    backend: Backend, run_dir: Path | None, target_sensitivity: float, tta: int, batch_size: int
) -> dict[str, Any]:
    """Threshold choice at `target_sensitivity` on the run's validation split (never on the test data)."""
    if run_dir is None or not (run_dir / "data.json").is_file():
        raise HistoscanInputError(
            "--target-sensitivity: needs a run folder with data.json (its validation split)"
        )
    info = json.loads((run_dir / "data.json").read_text())
    store = PatchStore.open(info["store"])  # raises naming the folder when it is gone
    split = _read_split(run_dir)
    rows = np.array([i for i, pid in enumerate(store.ids) if split.get(pid) == "val"], dtype=np.int64)
    if len(rows) == 0:
        raise HistoscanInputError(f"--target-sensitivity: {run_dir / 'split.csv'} has no validation rows")
    probs = sigmoid(infer(backend, store.images, rows, tta, batch_size, desc="validation"))
    return choose_run_threshold(store.labels[rows], probs, target_sensitivity)


def _write_predictions(path: Path, ids: list[str], groups: list[str], y: np.ndarray, p: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "label", "probability"])
        w.writerows((i, g, int(lab), f"{q:.6f}") for i, g, lab, q in zip(ids, groups, y, p, strict=True))


def default_out_dir(meta: dict[str, Any], data: str | Path) -> Path:
    """RUN/eval-<data name>/ (beside the checkpoint for a bare checkpoint)."""
    base = Path(meta["run_dir"]) if meta.get("run_dir") else Path(meta["checkpoint"]).parent
    name = Path(data).expanduser().resolve().name or "data"
    return base / f"eval-{Path(name).stem}"


def evaluate(
    run_or_ckpt: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    tta: int = 0,
    batch_size: int = 256,
    target_sensitivity: float | None = None,
    backend: Literal["torch", "onnx"] = "torch",
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Evaluate a trained model on labelled data and write the report.

    The decision threshold is the run's (threshold.json, chosen on the validation split) applied unchanged;
    0.5 when the run has none (said in the report). With `target_sensitivity`, the threshold is re-chosen on
    the run's validation split at that sensitivity — never on the data evaluated. If DATA is the run's own
    training store, only its held-out test rows are scored.

    Args:
        run_or_ckpt: run folder or checkpoint (or .onnx with backend "onnx").
        data: labelled source or STORE.
        out: output folder (default RUN/eval-<data name>/).
        tta: 0, 4 or 8 dihedral views (logits averaged).
        batch_size: patches per forward (times the TTA views).
        target_sensitivity: optional operating point for the threshold, chosen on validation data.
        backend: "torch" or "onnx".
        n_boot: bootstrap resamples for the 95 % CIs.

    Returns:
        The metrics written to metrics.json (compute_metrics keys plus context: subset, model, data, ...).
    """
    n_views(tta)
    fn, meta = make_backend(run_or_ckpt, backend)
    store = load_data(data, meta, "labelled")
    require_labelled(store, both_classes=False)
    rows, subset = rows_to_evaluate(store, meta["run_dir"])
    notes = []
    if subset == TEST_SUBSET:
        notes.append(
            f"DATA is this run's training data: only its {len(rows)} held-out test patches are scored."
        )
    threshold, source = meta["threshold"], meta["threshold_source"]
    if target_sensitivity is not None:
        chosen = validation_threshold(fn, meta["run_dir"], target_sensitivity, tta, batch_size)
        threshold = chosen["threshold"]
        source = f"validation split at target sensitivity {target_sensitivity} ({chosen['method']})"
    elif source.startswith("default"):
        notes.append("The run has no threshold.json: the default threshold 0.5 is used.")
    probs = sigmoid(infer(fn, store.images, rows, tta, batch_size, desc="evaluate"))
    y = store.labels[rows].astype(np.int64)
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
    if store.meta.get("n_skipped"):
        notes.append(f"{store.meta['n_skipped']} unreadable images were skipped (the run's --skip-bad).")
    data_mpp, model_mpp = store.meta.get("mpp"), meta.get("mpp")
    if data_mpp and model_mpp and abs(np.log(float(data_mpp) / float(model_mpp))) > np.log(1.25):
        notes.append(f"Resolution differs: data {data_mpp} µm/px, model trained at {model_mpp} µm/px.")
    m.update(
        subset=subset,
        data=str(data),
        store=str(store.path),
        model=meta["model"],
        checkpoint=meta["checkpoint"],
        run=str(meta["run_dir"]) if meta["run_dir"] else None,
        backend=meta["backend"],
        tta=n_views(tta),
        threshold_source=source,
        n_groups=len(set(groups)) if grouped else 0,
        notes=notes,
    )
    out_dir = Path(out) if out is not None else default_out_dir(meta, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_predictions(out_dir / "predictions.csv", ids, groups, y, probs)
    (out_dir / "metrics.json").write_text(json.dumps(m, indent=2))
    figures = write_figures(out_dir, y, probs, m, meta["run_dir"])
    config = meta["config"].to_dict() if meta.get("config") is not None else None
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
    m["out"] = str(out_dir)
    log.info("evaluation written to %s", out_dir)
    return m
