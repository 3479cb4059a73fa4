"""Evaluation report: figures plus one self-contained report.html (images embedded as base64)."""

from __future__ import annotations

import base64
import html
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
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em .8em;margin:.5em 0}
.plots img{max-width:49%;vertical-align:top}.wide img{max-width:100%}
.summary{font-size:1.05em;margin:.2em 0 .8em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,120px);gap:12px 10px;align-items:start}
.grid figure{margin:0;width:120px;min-width:0;font-size:11px;line-height:1.3;text-align:center}
.grid img{display:block;margin:0 auto 3px;width:104px;height:104px;image-rendering:pixelated;border:1px solid #aaa}
.grid figcaption{overflow-wrap:anywhere;word-break:break-all}.grid .p{display:block;font-weight:600}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px}.muted{color:#777}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


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
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else _esc(v)


def _metrics_table(m: dict[str, Any]) -> str:
    ci = m.get("ci95") or {}
    rows = []
    for key, label in METRIC_ROWS:
        c = ci.get(key)
        interval = f"{c[0]:.4f} – {c[1]:.4f}" if c else ""
        rows.append(f"<tr><td>{label}</td><td>{_fmt(m.get(key))}</td><td>{interval}</td></tr>")
    cal = m.get("calibration")
    if cal:  # before = the network's own logits, after = divided by the run's temperature
        for key, label in (("ece", "ECE (15 bins)"), ("brier", "Brier score"), ("nll", "NLL")):
            rows.append(
                f"<tr><td>{label} before → after calibration (T = {cal['temperature']:.3g})</td>"
                f"<td>{_fmt(cal[key + '_before'])} → {_fmt(cal[key + '_after'])}</td><td></td></tr>"
            )
    boot = m.get("bootstrap") or {}
    cap = (
        f"95% CIs: percentile bootstrap over {boot.get('n_units')} {boot.get('unit')}s, {boot.get('n_boot')} "
        f"resamples ({boot.get('n_dropped')} one-class resamples dropped)"
        if boot
        else "no bootstrap"
    )
    c = m["confusion"]
    return (
        "<table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>" + "".join(rows) + "</table>"
        f"<p class=muted>{_esc(cap)}. Threshold {m['threshold']:.4g}: TP {c['tp']}, FP {c['fp']}, "
        f"TN {c['tn']}, FN {c['fn']}.</p>"
    )


def _counts_tables(y: np.ndarray, p: np.ndarray, groups: Sequence[str] | None, threshold: float) -> str:
    n_pos = int(y.sum())
    out = (
        "<table><tr><th>class</th><th>patches</th><th>share</th></tr>"
        f"<tr><td>normal (0)</td><td>{len(y) - n_pos}</td><td>{(len(y) - n_pos) / len(y):.1%}</td></tr>"
        f"<tr><td>tumour (1)</td><td>{n_pos}</td><td>{n_pos / len(y):.1%}</td></tr></table>"
    )
    if not groups or not any(groups):
        return out + "<p class=muted>No patient/slide groups known for this data.</p>"
    g = np.asarray(groups, dtype=str)
    names, inv = np.unique(g, return_inverse=True)
    n = np.bincount(inv)
    pos = np.bincount(inv, y)
    correct = np.bincount(inv, ((p >= threshold) == (y == 1)).astype(float))
    mean_p = np.bincount(inv, p) / n
    rows = "".join(
        f"<tr><td>{_esc(names[i] or '(none)')}</td><td>{n[i]}</td><td>{int(pos[i])}</td>"
        f"<td>{n[i] - int(pos[i])}</td><td>{mean_p[i]:.3f}</td><td>{correct[i] / n[i]:.1%}</td></tr>"
        for i in np.argsort(names)
    )
    return out + (
        f"<details{' open' if len(names) <= 20 else ''}>"
        f"<summary>{len(names)} groups (patients/slides)</summary>"
        "<table><tr><th>group</th><th>patches</th><th>tumour</th><th>normal</th><th>mean p</th>"
        f"<th>accuracy</th></tr>{rows}</table></details>"
    )


def _grid(
    title: str, pos: np.ndarray, ids: Sequence[str], p: np.ndarray, images: Callable, empty: str
) -> str:
    if len(pos) == 0:
        return f"<h3>{_esc(title)}</h3><p class=muted>{_esc(empty)}</p>"
    imgs = images(pos)
    cells = "".join(
        f"<figure title='{_esc(ids[i])}'><img src='{_thumb(im)}' alt='{_esc(ids[i])}'>"
        f"<figcaption>{_esc(ids[i])}<span class=p>p = {p[i]:.3f}</span></figcaption></figure>"
        for im, i in zip(imgs, pos, strict=True)
    )
    return f"<h3>{_esc(title)}</h3><div class=grid>{cells}</div>"


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
    plots = "".join(
        f"<img src='{_b64_png(figures[k])}' alt='{k}'>"
        for k in ("roc", "pr", "confusion", "calibration")
        if k in figures
    )
    curves = (
        f"<div class=wide><img src='{_b64_png(figures['curves'])}' alt='training curves'></div>"
        if "curves" in figures
        else f"<p class=muted>No training curves (the run has no {RunDir.METRICS}).</p>"
    )
    if "curves" in figures and mark:
        curves += f"<p class=muted>Dashed line: the evaluated weights, epoch {mark[0]} ({_esc(mark[1])}).</p>"
    data_name = Path(str(m.get("data", ""))).name
    config_text = yaml.safe_dump(config, sort_keys=False) if config else "not available (bare checkpoint)"
    body = [
        f"<h1>histoscan evaluation: {_esc(m.get('model', ''))} on {_esc(data_name)}</h1>",
        f"<p class=summary>{_esc(summary)}</p>",
        *(f"<div class=note>{_esc(n)}</div>" for n in notes),
        "<table>"
        + "".join(
            f"<tr><td>{k}</td><td style='text-align:left'>{_esc(v)}</td></tr>"
            for k, v in head
            if v is not None or k not in ("evaluated epoch", "trained with")
        )
        + "</table>",
        "<h2>Metrics</h2>",
        _metrics_table(m),
        f"<h2>Curves</h2><div class=plots>{plots}</div>",
        "<h2>Training curves</h2>",
        curves,
        "<h2>Data</h2>",
        _counts_tables(y, p, groups, m["threshold"]),
        "<h2>Most confident errors</h2>",
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
        "<h2>Run configuration</h2>",
        f"<pre>{_esc(config_text)}</pre>",
    ]
    doc = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>histoscan evaluation — {_esc(m.get('model', ''))}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
    path = EvalDir(out_dir).report_path
    path.write_text(doc, encoding="utf-8")
    return path
