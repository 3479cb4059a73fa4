"""`histoscan predict`: tumour probabilities for unlabelled patches through any Predictor; CSV and Kaggle writers."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoscan.data.store import PatchStore, is_store, resolve_store
from histoscan.errors import HistoscanInputError
from histoscan.inference.card import ModelCard
from histoscan.inference.predictor import BackendName, load_predictor
from histoscan.inference.tta import infer, n_views, run_tta
from histoscan.stain.domain import domain_warnings
from histoscan.utils.fs import atomic_path, guard_output
from histoscan.utils.numeric import sigmoid

log = logging.getLogger(__name__)


def store_for_model(
    data: str | Path, card: ModelCard, part: Literal["labelled", "unlabelled"], skip_bad: bool = False
) -> PatchStore:
    """The store for DATA at the model's image size.

    A raw source is prepared as the run was (its image_size/fit/skip_bad, so the run's own training data
    resolves to the same store) and re-fitted to the model's size if it comes out at another size; a prepared
    STORE of another size is an error (re-fitting it would change the data the store was made to hold).
    """
    size, fit = card.image_size, card.fit or "pad"
    p = Path(data).expanduser()
    if is_store(p):
        store = resolve_store(p, part=part)
        if store.size != size:
            raise HistoscanInputError(
                f"{p}: store holds {store.size}px patches but the model expects {size}px; prepare the data "
                f"again with --image-size {size}, or pass the raw source to re-fit it automatically"
            )
    else:
        config = card.config
        skip_bad = skip_bad or bool(config and config.skip_bad)
        store = resolve_store(
            p, image_size=config.image_size if config else size, fit=fit, skip_bad=skip_bad, part=part
        )
        if store.size != size:
            log.info("%s: %dpx patches fitted (%s) to the model's %dpx", p, store.size, fit, size)
            store = resolve_store(p, image_size=size, fit=fit, skip_bad=skip_bad, part=part)
    if len(store) == 0:
        raise HistoscanInputError(f"{p}: no images to predict")
    return store


def skipped_files(store: PatchStore) -> tuple[int, list[dict[str, str]]]:
    """(count, [{source, reason}, ...]) of the unreadable images the store skipped (--skip-bad)."""
    return int(store.meta.get("n_skipped") or 0), list(store.meta.get("skipped") or [])


def _submission_order(data: Path) -> list[str] | None:
    """Ids of a Kaggle sample_submission.csv in DATA (or beside a test/ folder), in file order."""
    for cand in (data / "sample_submission.csv", data.parent / "sample_submission.csv"):
        if data.is_dir() and cand.is_file():
            with cand.open(newline="") as f:
                return [row["id"] for row in csv.DictReader(f)]
    return None


def fitted_column(store: PatchStore, rows: np.ndarray | None = None) -> list[str]:
    """Per row (all, or `rows`), how its image was fitted to the model's size ("padded 50x42 -> 50x50"; "" when
    it had the size; "unknown" for a store prepared before histoscan recorded fits)."""
    fitted = store.fitted
    idx = range(len(store)) if rows is None else rows
    return ["unknown" for _ in idx] if fitted is None else [fitted[i] for i in idx]


def fitted_summary(fitted: list[str], size: int) -> str | None:
    """One line saying how many patches were fitted to `size` and how, or None when none were."""
    done = [f for f in fitted if f]
    if not done:
        return None
    kinds = Counter(f.split(" ", 1)[0] if f != "unknown" else "unknown" for f in done)
    how = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return (
        f"{len(done)} of {len(fitted)} images had another size than the model's {size}x{size} px and were "
        f"fitted to it ({how}); see the fitted column of the predictions CSV"
    )


def write_predictions(
    path: Path,
    ids: list[str],
    probs: np.ndarray,
    threshold: float,
    fmt: Literal["csv", "kaggle"],
    order=None,
    fitted: list[str] | None = None,
) -> None:
    """Write csv (id,probability,label,fitted; label = probability >= threshold, fitted = how the image was
    fitted to the model's size, "" when it had it) or kaggle (id,label=probability)."""
    if fmt == "kaggle" and order is not None:
        where = {i: k for k, i in enumerate(ids)}
        missing = [i for i in order if i not in where]
        if missing:
            raise HistoscanInputError(
                f"sample_submission.csv: {len(missing)} ids have no image, e.g. {missing[0]}"
            )
        ids, probs = list(order), probs[[where[i] for i in order]]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        if fmt == "kaggle":
            w.writerow(["id", "label"])
            w.writerows((i, f"{q:.6f}") for i, q in zip(ids, probs, strict=True))
        else:
            fitted = fitted if fitted is not None else [""] * len(ids)
            w.writerow(["id", "probability", "label", "fitted"])
            w.writerows(
                (i, f"{q:.6f}", int(q >= threshold), fit)
                for i, q, fit in zip(ids, probs, fitted, strict=True)
            )


def predict(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    fmt: Literal["csv", "kaggle"] = "csv",
    tta: int | None = None,
    batch_size: int = 256,
    backend: BackendName = "auto",
    skip_bad: bool = False,
    force: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Tumour probabilities for every patch of DATA (labels, if any, are ignored), written to `out`.

    Args:
        model: run folder, checkpoint or .onnx export.
        data: a source (image folder, Kaggle HCD test layout, PCam, manifest) or a prepared STORE.
        out: output CSV file (an existing file needs `force`).
        fmt: "csv" (id,probability,label at the run's threshold,fitted) or "kaggle" (id,label = tumour
            probability, in sample_submission.csv order when DATA has one; ids are file stems).
        tta: 0, 4 or 8 dihedral views averaged in logit space; None: the run's recorded `tta`.
        batch_size: patches per forward (times the TTA views).
        backend: "auto" (from MODEL), "torch" or "onnx".
        skip_bad: skip unreadable images (counted and listed in the summary) instead of stopping.
        force: overwrite an existing `out`.
        device: "auto" (a GPU when the backend can use one), "cpu", "cuda" or "cuda:N", the same for torch and
            ONNX models (:func:`histoscan.inference.predictor.load_predictor`).

    Returns:
        Summary: n, out, format, threshold, threshold_source, n_positive (at the threshold), mean_probability,
        tta, backend, model, n_skipped, skipped, n_fitted and fitted_note (images of another size fitted to
        the model's: their count, and a line saying so or None), warnings (one line each: the data's µm/px or
        colour far from the training data's, see :mod:`histoscan.stain.domain`), colour_distance.
    """
    if fmt not in ("csv", "kaggle"):
        raise HistoscanInputError(f"--format {fmt}: choose csv or kaggle")
    if tta is not None:
        n_views(tta)
    out = guard_output(out, force, "file")
    predictor = load_predictor(model, backend, device)
    tta = run_tta(predictor, tta)
    card = predictor.card
    store = store_for_model(data, card, "unlabelled", skip_bad)
    warnings, colour_distance = domain_warnings(predictor, store.meta.get("mpp"), store.images)
    probs = sigmoid(infer(predictor, store.images, tta=tta, batch_size=batch_size))
    predictor.stain_note("predicted patches (TTA views counted)")  # one warning line, not one per batch
    order = _submission_order(Path(data)) if fmt == "kaggle" else None
    fitted = fitted_column(store)
    write_predictions(out, store.ids, probs, card.threshold, fmt, order, fitted)
    n_skipped, skipped = skipped_files(store)
    return {
        "n": len(probs),
        "out": str(out),
        "format": fmt,
        "threshold": card.threshold,
        "threshold_source": card.threshold_source,
        "n_positive": int((probs >= card.threshold).sum()),
        "mean_probability": float(probs.mean()),
        "tta": n_views(tta),
        "backend": card.backend,
        "model": card.model,
        "n_skipped": n_skipped,
        "skipped": skipped,
        "n_fitted": sum(1 for f in fitted if f),
        "fitted_note": fitted_summary(fitted, store.size),
        "warnings": warnings,
        "colour_distance": colour_distance,
    }
