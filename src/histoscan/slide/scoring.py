"""Scores of a slide map against a truth label grid: tile AUC, Dice, tumour area, region sensitivity, FROC.

Truth labels are GLASS/NORMAL/TUMOUR cells (a truth mosaic's `.truth.npy`, benchmarks/truth_mosaic.py, or any
annotation rasterised to cells); `truth_under_cells` puts them under a map's heatmap cells.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

GLASS, NORMAL, TUMOUR = 0, 1, 2
FP_LEVELS = (1, 2, 4)  # false-positive regions per slide at which region sensitivity is reported


def truth_under_cells(
    truth: np.ndarray, cell: float, origin: float, shape: tuple[int, int], cell0: float, offset0: float = 0.0
) -> np.ndarray:
    """The truth label under the centre of each heatmap cell (GLASS outside the truth grid).

    Args:
        truth: truth cell labels, `cell` level-0 px each, cell (0, 0) at level-0 px (`origin`, `origin`).
        shape: the heatmap's (rows, cols); its cells are `cell0` level-0 px, cell (0, 0) at `offset0`.
    """
    out = []
    for n, m in ((shape[0], truth.shape[0]), (shape[1], truth.shape[1])):
        centre = offset0 + (np.arange(n) + 0.5) * cell0
        idx = np.floor((centre - origin) / cell).astype(int)
        out.append((idx, (idx >= 0) & (idx < m)))
    (r, r_ok), (c, c_ok) = out
    lab = truth[np.clip(r, 0, truth.shape[0] - 1)][:, np.clip(c, 0, truth.shape[1] - 1)]
    return np.where(r_ok[:, None] & c_ok[None, :], lab, GLASS).astype(np.int8)


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties half); None when a class is absent."""
    from scipy.stats import rankdata

    y, p = np.asarray(y, bool), np.asarray(p, float)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return None
    ranks = rankdata(p)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def region_detection(called: np.ndarray, truth_t: np.ndarray) -> tuple[int, int, int]:
    """(truth regions detected, truth regions, false-positive called regions): a truth region is detected
    when any called cell overlaps it; a called region is a false positive when it overlaps no truth tumour.
    Regions are 4-connected, as in regions.geojson."""
    lab_t, n_t = ndimage.label(truth_t)
    lab_c, n_c = ndimage.label(called)
    detected = len(np.unique(lab_t[called & truth_t]))
    hit = len(np.unique(lab_c[called & truth_t]))
    return detected, n_t, n_c - hit


def froc(heat: np.ndarray, truth_t: np.ndarray, n_thresholds: int = 256) -> dict[int, float | None]:
    """Region sensitivity at most 1/2/4 false-positive regions per slide, over thresholds swept across the
    map's probabilities (the best threshold for each FP level)."""
    p = heat[np.isfinite(heat)]
    if not len(p) or not truth_t.any():
        return {f: None for f in FP_LEVELS}
    levels = np.unique(np.quantile(p, np.linspace(0, 1, n_thresholds)))
    best = dict.fromkeys(FP_LEVELS, 0.0)
    values = np.nan_to_num(heat, nan=-1.0)
    for t in levels:
        det, n_t, fp = region_detection(values >= t, truth_t)
        for f in FP_LEVELS:
            if fp <= f:
                best[f] = max(best[f], det / n_t)
    return best


def score_map(
    heat: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    cell_mm2: float,
    truth_mm2: float | None = None,
    sweep: bool = True,
) -> dict:
    """Scores of a slide map against truth labels of the same shape (`truth_under_cells`).

    Args:
        heat: probabilities per heatmap cell, NaN where not classified (no tissue).
        labels: GLASS/NORMAL/TUMOUR per heatmap cell.
        threshold: the tumour call threshold.
        cell_mm2: a heatmap cell's area.
        truth_mm2: the true tumour area (default: the tumour cells of `labels` times `cell_mm2`).
        sweep: also sweep the threshold for froc_<k> (False: a caller with its own lesion-based FROC,
            slide/truth.py, skips the 256 region labellings).

    Returns:
        tile_auc (classified tissue cells), dice (called vs truth tumour cells), best_dice / best_threshold,
        region sensitivity at the threshold and its false-positive regions, froc_<k> (sensitivity at <= k
        FP regions), called/true/error/bias (called - true) tumour mm², glass cells classified (count, % of
        glass) and called, tissue cells missed (%).
    """
    done = np.isfinite(heat)
    tissue, t = labels != GLASS, labels == TUMOUR
    values = np.nan_to_num(heat, nan=-1.0)
    called = values >= threshold
    inter, denom = (called & t).sum(), called.sum() + t.sum()
    best_dice, best_t = 0.0, None
    for thr in np.unique(np.quantile(heat[done], np.linspace(0, 1, 201))) if done.any() else []:
        c = values >= thr
        d = 2 * (c & t).sum() / max(c.sum() + t.sum(), 1)
        if d > best_dice:
            best_dice, best_t = float(d), float(thr)
    det, n_t, fp = region_detection(called, t)
    true_mm2 = float(t.sum() * cell_mm2) if truth_mm2 is None else float(truth_mm2)
    called_mm2 = float(called.sum() * cell_mm2)
    out = {
        "tile_auc": auc(t[tissue & done], heat[tissue & done]),
        "dice": float(2 * inter / denom) if denom else 1.0,
        "best_dice": best_dice,
        "best_threshold": best_t,
        "threshold": float(threshold),
        "regions": n_t,
        "regions_detected": det,
        "fp_regions": fp,
        **({f"froc_{k}": v for k, v in froc(heat, t).items()} if sweep else {}),
        "called_mm2": called_mm2,
        "true_mm2": true_mm2,
        "area_error_mm2": abs(called_mm2 - true_mm2),
        "area_bias_mm2": called_mm2 - true_mm2,
        "glass_classified": int((done & ~tissue).sum()),
        "glass_classified_pct": float(100 * (done & ~tissue).sum() / max((~tissue).sum(), 1)),
        "glass_called": int((called & ~tissue).sum()),
        "tissue_missed_pct": float(100 * (tissue & ~done).sum() / max(tissue.sum(), 1)),
    }
    return out
