"""A slide map checked against a pathologist's outlines: tile AUC, Dice at the threshold, Camelyon16's FROC.

The outlines (slide/annotations.py) are put on the map's heatmap cells: a cell is tumour when its centre lies in
a tumour outline, normal when it is classified tissue, glass otherwise. A lesion is one connected outline
(Camelyon16's definition); each lesion owns the cells whose centre it holds (a lesion smaller than a cell owns
the cell under its representative point, so every lesion can be found). A called region (4-connected cells at or
above a threshold, as in regions.geojson) detects every lesion it overlaps and is a false positive when it
overlaps none. The FROC sweeps the threshold: sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide,
pooled over a cohort (detected lesions over all lesions; false positives averaged over the slides) as in
Camelyon16, whose score is the mean of the six.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage

from histoscan.slide.annotations import SlideAnnotations
from histoscan.slide.scoring import GLASS, NORMAL, TUMOUR, score_map

FP_PER_SLIDE = (0.25, 0.5, 1, 2, 4, 8)
THRESHOLDS = np.round(np.linspace(0, 1, 201), 3)  # the sweep every slide records, so a cohort can pool them


def cell_centres(shape: tuple[int, int], cell0: float, offset0: float) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (x, y) of every heatmap cell's centre, each of `shape`."""
    ys = offset0 + (np.arange(shape[0]) + 0.5) * cell0
    xs = offset0 + (np.arange(shape[1]) + 0.5) * cell0
    return np.meshgrid(xs, ys)


def lesion_cells(ann: SlideAnnotations, shape: tuple[int, int], cell0: float, offset0: float) -> np.ndarray:
    """int32 `shape`: 0 no lesion, k the k-th lesion (largest first) whose outline holds the cell's centre."""
    x, y = cell_centres(shape, cell0, offset0)
    out = np.zeros(shape, np.int32)
    for k, lesion in enumerate(ann.lesions(), start=1):
        x0, y0, x1, y1 = lesion.bounds
        c0, c1 = int(max(0, (x0 - offset0) // cell0)), int(min(shape[1], (x1 - offset0) // cell0 + 1))
        r0, r1 = int(max(0, (y0 - offset0) // cell0)), int(min(shape[0], (y1 - offset0) // cell0 + 1))
        if c0 >= c1 or r0 >= r1:
            continue
        inside = shapely.contains_xy(lesion, x[r0:r1, c0:c1], y[r0:r1, c0:c1])
        if not inside.any():  # smaller than a cell: the cell under its representative point
            px, py = lesion.representative_point().coords[0]
            r, c = int((py - offset0) // cell0), int((px - offset0) // cell0)
            if 0 <= r < shape[0] and 0 <= c < shape[1]:
                out[r, c] = out[r, c] or k
            continue
        block = out[r0:r1, c0:c1]
        block[inside & (block == 0)] = k
    return out


def truth_labels(lesions: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """GLASS / NORMAL / TUMOUR per cell: tumour under a lesion, normal where the map classified tissue."""
    return np.where(lesions > 0, TUMOUR, np.where(np.isfinite(heat), NORMAL, GLASS)).astype(np.int8)


def detections(heat: np.ndarray, lesions: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """(len(thresholds), 3) int: lesions detected, lesions, false-positive regions, at each threshold."""
    values = np.nan_to_num(heat, nan=-1.0)
    n_lesions = int(lesions.max())
    out = np.zeros((len(thresholds), 3), np.int64)
    out[:, 1] = n_lesions
    for i, t in enumerate(thresholds):
        called = values >= t
        if not called.any():
            continue
        lab, n = ndimage.label(called)
        out[i, 0] = len(np.unique(lesions[called & (lesions > 0)]))
        out[i, 2] = n - len(np.unique(lab[called & (lesions > 0)]))
    return out


def froc(counts: list[np.ndarray]) -> dict[str, float | None]:
    """Camelyon16's FROC over slides' `detections`: sensitivity at each FP_PER_SLIDE level and their mean
    ("score"); None when the slides hold no lesion."""
    total = np.sum(counts, axis=0)
    if total[0, 1] == 0:
        return {**{f"sens_at_{f:g}_fp": None for f in FP_PER_SLIDE}, "score": None}
    sens = total[:, 0] / total[:, 1]
    fp = total[:, 2] / len(counts)
    out: dict[str, float | None] = {}
    for f in FP_PER_SLIDE:
        ok = fp <= f
        out[f"sens_at_{f:g}_fp"] = float(sens[ok].max()) if ok.any() else 0.0
    out["score"] = float(np.mean([out[f"sens_at_{f:g}_fp"] for f in FP_PER_SLIDE]))
    return out


def score_slide(
    heat: np.ndarray, threshold: float, ann: SlideAnnotations, cell0: float, offset0: float, cell_mm2: float
) -> dict:
    """The map `heat` (cells of `cell0` level-0 px from `offset0`) against `ann`: tile AUC, Dice at `threshold`,
    area, the slide's own FROC and its per-threshold `detections` (for pooling over a cohort)."""
    lesions = lesion_cells(ann, heat.shape, cell0, offset0)
    labels = truth_labels(lesions, heat)
    true_mm2 = float(ann.tumour.area) * cell_mm2 / cell0**2
    scores = score_map(heat, labels, threshold, cell_mm2, truth_mm2=true_mm2, sweep=False)
    counts = detections(heat, lesions)
    keep = ("tile_auc", "dice", "best_dice", "best_threshold", "threshold", "called_mm2", "true_mm2")
    return {
        **{k: scores[k] for k in keep},
        "lesions": int(lesions.max()),
        "tumour_cells": int((labels == TUMOUR).sum()),
        "froc": froc([counts]),
        "detections": {"thresholds": THRESHOLDS.tolist(), "counts": counts.tolist()},
    }
