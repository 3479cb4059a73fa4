"""Evaluation figures (ROC, PR, confusion matrix, reliability diagram, training curves) as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from histoscan.scoring.metrics import pr_curve, reliability, roc_curve  # noqa: E402

DPI = 110


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    ci = (m.get("ci95") or {}).get(key)
    return f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_roc(y: np.ndarray, p: np.ndarray, m: dict[str, Any], path: Path) -> Path:
    """ROC curve with AUC (and CI), the chance line and the operating point at the threshold."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    if m.get("auc") is not None:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"AUC {m['auc']:.3f}{_fmt_ci(m, 'auc')}")
        ax.plot(1 - m["specificity"], m["recall"], "o", color="C3", label=f"threshold {m['threshold']:.3g}")
    else:
        ax.text(0.5, 0.5, "undefined: one class only", ha="center")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(
        xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", xlim=(0, 1), ylim=(0, 1.01), title="ROC"
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(y: np.ndarray, p: np.ndarray, m: dict[str, Any], path: Path) -> Path:
    """Precision-recall curve with average precision and the prevalence baseline."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    if m.get("pr_auc") is not None:
        rec, prec = pr_curve(y, p)
        ax.step(rec, prec, where="post", lw=2, label=f"AP {m['pr_auc']:.3f}")
        ax.axhline(m["n_positive"] / m["n"], ls="--", color="grey", lw=1, label="prevalence")
        if m.get("precision") is not None:
            ax.plot(m["recall"], m["precision"], "o", color="C3", label=f"threshold {m['threshold']:.3g}")
    else:
        ax.text(0.5, 0.5, "undefined: no positives", ha="center")
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="Precision-recall",
    )
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_confusion(m: dict[str, Any], path: Path) -> Path:
    """2 x 2 confusion matrix at the threshold: counts and row percentages."""
    c = m["confusion"]
    mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], dtype=float)
    rows = mat.sum(axis=1, keepdims=True)
    share = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{int(mat[i, j])}\n{share[i, j]:.1%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["normal", "tumour"],
        yticklabels=["normal", "tumour"],
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion at threshold {m['threshold']:.3g}",
    )
    return _save(fig, path)


def plot_calibration(
    y: np.ndarray, p: np.ndarray, m: dict[str, Any], path: Path, p_before: np.ndarray | None = None
) -> Path:
    """Reliability diagram (fraction positive against mean probability per bin) over a histogram of p; with
    `p_before`, the uncalibrated model's diagram beside it (the temperature in m["calibration"])."""
    mean_p, frac, count = reliability(y, p)
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(4.8, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ok = count > 0
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if p_before is not None:
        cal = m.get("calibration") or {}
        b_mean, b_frac, b_count = reliability(y, p_before)
        ax.plot(b_mean[b_count > 0], b_frac[b_count > 0], "s:", color="C1", alpha=0.8,
                label=f"before calibration (ECE {cal.get('ece_before', float('nan')):.3f})")  # fmt: skip
    label = f"calibrated, T = {m['calibration']['temperature']:.3g}" if p_before is not None else "model"
    ax.plot(mean_p[ok], frac[ok], "o-", color="C0", label=f"{label} (ECE {m['ece']:.3f})")
    ax.set(ylabel="fraction tumour", ylim=(0, 1), title="Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    edges = np.linspace(0, 1, len(count) + 1)
    hx.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="C0", alpha=0.6)
    hx.set(xlabel="predicted tumour probability", ylabel="patches", xlim=(0, 1))
    return _save(fig, path)


def evaluated_epoch(
    curves: dict[str, np.ndarray], monitor: str = "val_auc", last: bool = False
) -> tuple[int, str] | None:
    """The epoch whose weights were evaluated and why: the best row of `monitor` (as best.ckpt keeps it).

    Args:
        curves: columns of RUN/metrics.csv (see `RunDir.metric_columns`).
        monitor: "val_auc" (highest wins) or "val_loss" (lowest wins), the run's `monitor`.
        last: the evaluated weights are last.ckpt: the last row.

    Returns:
        (epoch as metrics.csv numbers it, reason such as "best val_auc 0.912"), or None when the column
        has no value.
    """
    n = len(next(iter(curves.values())))
    epoch = curves.get("epoch", np.arange(n))
    if last:
        return int(epoch[-1]), "last epoch"
    v = curves.get(monitor)
    if v is None or not np.isfinite(v).any():
        return None
    i = int(np.nanargmin(v) if monitor == "val_loss" else np.nanargmax(v))  # first of ties, as checkpointing
    return int(epoch[i]), f"best {monitor} {v[i]:.3f}"


def curves_figure(curves: dict[str, np.ndarray], mark: tuple[int, str] | None = None) -> plt.Figure:
    """Loss, AUC and accuracy per epoch for the train and validation splits; `mark` = (epoch, reason)
    draws the evaluated epoch as a dashed vertical line labelled "evaluated: epoch k" in every panel."""
    epoch = curves.get("epoch", np.arange(len(next(iter(curves.values())))))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharex=True)  # one epoch axis, even for an empty panel
    for ax, name in zip(axes, ("loss", "auc", "acc"), strict=True):
        for split in ("train", "val"):
            v = curves.get(f"{split}_{name}")
            if v is not None and np.isfinite(v).any():
                ok = np.isfinite(v)
                ax.plot(epoch[ok], v[ok], "o-", ms=3, label=split)
        if not ax.get_lines():
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", color="grey", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if mark is not None:
            ax.axvline(mark[0], color="C3", ls="--", lw=1.2, label=f"evaluated: epoch {mark[0]}")
        ax.set(xlabel="epoch", title={"loss": "loss (BCE)", "auc": "AUC", "acc": "accuracy"}[name])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def plot_curves(curves: dict[str, np.ndarray], path: Path, mark: tuple[int, str] | None = None) -> Path:
    """Write `curves_figure(curves, mark)` to path."""
    return _save(curves_figure(curves, mark), path)
