"""Evaluation report: figures plus one self-contained report.html (images embedded as base64).

The page is the jinja2 template histoscan/templates/evaluation_report.html.j2 (autoescaped); this module
gathers and formats the values it shows.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from histoscan import __version__
from histoscan.errors import HistoscanInputError
from histoscan.evaluation.plots import (
    evaluated_epoch,
    plot_calibration,
    plot_confusion,
    plot_curves,
    plot_pr,
    plot_roc,
)
from histoscan.folders import EvalDir, RunDir
from histoscan.utils.html import render_html

GRID = 16  # thumbnails per error grid
METRIC_ROWS = [
    ("auc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("balanced_accuracy", "balanced accuracy"),
    ("accuracy", "accuracy"),
    ("recall", "sensitivity (recall)"),
    ("specificity", "specificity"),
    ("precision", "precision (PPV)"),
    ("f1", "F1"),
    ("brier", "Brier score"),
    ("ece", "ECE (15 bins)"),
]


def _b64_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _thumb(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def training_curves(run: RunDir) -> dict[str, np.ndarray] | None:
    """RUN/metrics.csv as columns with 1-based epochs (as training prints them; see `RunDir.metric_columns`);
    None when absent or empty."""
    return run.metric_columns()


def evaluated_mark(
    run: RunDir | None, checkpoint: str | None = None, curves: dict[str, np.ndarray] | None = None
) -> tuple[int, str] | None:
    """(1-based epoch, reason) of the evaluated weights on RUN's training curves: last.ckpt -> the last epoch,
    any other model of the run (best.ckpt, its ONNX export) -> the best epoch by the run's monitor. `curves`:
    the run's `training_curves` when the caller has read them already."""
    if curves is None and run is not None:
        curves = training_curves(run)
    if not curves or run is None:
        return None
    try:
        monitor = run.read_config().monitor
    except HistoscanInputError:  # no or unreadable config.yaml: the default monitor when it was logged
        monitor = "val_auc" if np.isfinite(curves.get("val_auc", np.array([np.nan]))).any() else "val_loss"
    return evaluated_epoch(curves, monitor, RunDir.is_last_checkpoint(checkpoint))


def write_figures(
    out_dir: Path,
    y: np.ndarray,
    p: np.ndarray,
    m: dict[str, Any],
    run: RunDir | None,
    p_before: np.ndarray | None = None,
) -> dict:
    """Write roc.png, pr.png, confusion.png, calibration.png (with `p_before`, the uncalibrated probabilities,
    drawn too) and (with RUN/metrics.csv) curves.png, the evaluated epoch marked on the curves (see
    `evaluated_mark`; m["checkpoint"] names the weights)."""
    folder = EvalDir(out_dir)
    figs = {
        "roc": plot_roc(y, p, m, folder.figure("roc")),
        "pr": plot_pr(y, p, m, folder.figure("pr")),
        "confusion": plot_confusion(m, folder.figure("confusion")),
        "calibration": plot_calibration(y, p, m, folder.figure("calibration"), p_before),
    }
    curves = training_curves(run) if run is not None else None
    if curves:
        mark = evaluated_mark(run, m.get("checkpoint"), curves)
        figs["curves"] = plot_curves(curves, folder.figure("curves"), mark)
    return figs


def confident_errors(
    y: np.ndarray, p: np.ndarray, threshold: float, k: int = GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the k most confident false positives (highest p) and false negatives (lowest p)."""
    fp = np.flatnonzero((y == 0) & (p >= threshold))
    fn = np.flatnonzero((y == 1) & (p < threshold))
    return fp[np.argsort(-p[fp], kind="stable")][:k], fn[np.argsort(p[fn], kind="stable")][:k]


def _tta_text(views: int | None) -> str:
    """`--tta 0` (one view: the patch as it is) is "off"."""
    return "off" if not views or views <= 1 else f"{views} dihedral views, logits averaged"


def _limit_text(config: dict[str, Any] | None) -> str | None:
    """The evaluated run's smoke-run cap (`--limit-batches N`), or None when it was trained in full."""
    n = (config or {}).get("limit_batches")
    return (
        f"--limit-batches {n}: at most {n} train and {n} val batches per epoch (a smoke run)" if n else None
    )


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _metric_rows(m: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, 95 % CI) rows of the metrics table; with a calibration, before -> after rows too."""
    ci = m.get("ci95") or {}
    rows = []
    for key, label in METRIC_ROWS:
        c = ci.get(key)
        rows.append((label, _fmt(m.get(key)), f"{c[0]:.4f} – {c[1]:.4f}" if c else ""))
    cal = m.get("calibration")
    if cal:  # before = the network's own logits, after = divided by the run's temperature
        for key, label in (("ece", "ECE (15 bins)"), ("brier", "Brier score"), ("nll", "NLL")):
            rows.append(
                (
                    f"{label} before → after calibration (T = {cal['temperature']:.3g})",
                    f"{_fmt(cal[key + '_before'])} → {_fmt(cal[key + '_after'])}",
                    "",
                )
            )
    return rows


def _ci_caption(m: dict[str, Any]) -> str:
    boot = m.get("bootstrap") or {}
    if not boot:
        return "no bootstrap"
    return (
        f"95% CIs: percentile bootstrap over {boot.get('n_units')} {boot.get('unit')}s, {boot.get('n_boot')} "
        f"resamples ({boot.get('n_dropped')} one-class resamples dropped)"
    )


def _group_rows(
    y: np.ndarray, p: np.ndarray, groups: Sequence[str] | None, threshold: float
) -> list[dict[str, Any]] | None:
    """One row per patient/slide (sorted by name): patches, tumour, normal, mean p, accuracy; None without
    groups."""
    if not groups or not any(groups):
        return None
    g = np.asarray(groups, dtype=str)
    names, inv = np.unique(g, return_inverse=True)
    n = np.bincount(inv)
    pos = np.bincount(inv, y)
    correct = np.bincount(inv, ((p >= threshold) == (y == 1)).astype(float))
    mean_p = np.bincount(inv, p) / n
    return [
        {
            "name": names[i] or "(none)",
            "n": int(n[i]),
            "tumour": int(pos[i]),
            "normal": int(n[i]) - int(pos[i]),
            "mean_p": f"{mean_p[i]:.3f}",
            "accuracy": f"{correct[i] / n[i]:.1%}",
        }
        for i in np.argsort(names)
    ]


def _grid(
    title: str, pos: np.ndarray, ids: Sequence[str], p: np.ndarray, images: Callable, empty: str
) -> dict[str, Any]:
    """An error grid: its title, (id, thumbnail data URI, probability) cells, and the text when it is empty."""
    cells = []
    if len(pos):
        cells = [(str(ids[i]), _thumb(im), f"{p[i]:.3f}") for im, i in zip(images(pos), pos, strict=True)]
    return {"title": title, "cells": cells, "empty": empty}


def write_report(
    out_dir: Path,
    m: dict[str, Any],
    y: np.ndarray,
    p: np.ndarray,
    ids: Sequence[str],
    groups: Sequence[str] | None,
    images: Callable[[np.ndarray], np.ndarray],
    config: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    figures: dict[str, Path] | None = None,
) -> Path:
    """Write out_dir/report.html: metrics with CIs, figures, config, counts and the most confident errors.

    Args:
        out_dir: folder that already holds the figures (see `write_figures`).
        m: the metrics dict (compute_metrics plus context keys: model, run, data, subset, tta, ...).
        y, p, ids, groups: the evaluated patches' labels, probabilities, ids and groups.
        images: positions into y/p -> uint8 N x S x S x 3 patches, for the error grids.
        config: the run's configuration.
        notes: lines shown prominently at the top (subset used, missing threshold, ...).
        figures: name -> PNG path, embedded in this order.
    """
    figures = figures or {}
    fp, fn = confident_errors(y, p, m["threshold"])
    mark = evaluated_mark(RunDir(Path(m["run"])) if m.get("run") else None, m.get("checkpoint"))
    head = [
        ("model", m.get("model")),
        ("run / checkpoint", m.get("checkpoint")),
        ("evaluated epoch", f"{mark[0]} ({mark[1]})" if mark else None),
        ("trained with", _limit_text(config)),
        ("data", m.get("data")),
        ("evaluated", f"{m['n']} patches ({m.get('subset', 'all')})"),
        ("threshold", f"{m['threshold']:.4g} — source: {m.get('threshold_source') or 'unknown'}"),
        ("test-time augmentation", _tta_text(m.get("tta", 1))),
        ("backend", m.get("backend") or "unknown"),
        ("created", f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC} by histoscan {__version__}"),
    ]
    summary = (
        f"{m.get('model', '')} via {m.get('backend') or 'unknown backend'} · TTA {_tta_text(m.get('tta', 1))}"
        f" · threshold {m['threshold']:.4g} ({m.get('threshold_source') or 'unknown source'})"
        + (f" · trained with --limit-batches {config['limit_batches']}" if _limit_text(config) else "")
    )
    n, n_pos = len(y), int(y.sum())
    doc = render_html(
        "evaluation_report.html.j2",
        model=m.get("model", ""),
        data_name=Path(str(m.get("data", ""))).name,
        summary=summary,
        notes=list(notes),
        head=[(k, str(v)) for k, v in head if v is not None or k not in ("evaluated epoch", "trained with")],
        metric_rows=_metric_rows(m),
        ci_caption=_ci_caption(m),
        threshold=f"{m['threshold']:.4g}",
        confusion=m["confusion"],
        plots=[(k, _b64_png(figures[k])) for k in ("roc", "pr", "confusion", "calibration") if k in figures],
        curves=_b64_png(figures["curves"]) if "curves" in figures else None,
        mark=mark,
        classes=[
            ("normal (0)", n - n_pos, f"{(n - n_pos) / n:.1%}"),
            ("tumour (1)", n_pos, f"{n_pos / n:.1%}"),
        ],
        groups=_group_rows(y, p, groups, m["threshold"]),
        grids=[
            _grid(
                "False positives (normal called tumour), highest probability first",
                fp,
                ids,
                p,
                images,
                "No false positives at this threshold.",
            ),
            _grid(
                "False negatives (tumour called normal), lowest probability first",
                fn,
                ids,
                p,
                images,
                "No false negatives at this threshold.",
            ),
        ],
        config_text=yaml.safe_dump(config, sort_keys=False) if config else "not available (bare checkpoint)",
        metrics_name=RunDir.METRICS,
    )
    path = EvalDir(out_dir).report_path
    path.write_text(doc, encoding="utf-8")
    return path
