"""Binary classification metrics, patient/slide-level bootstrap confidence intervals and threshold choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from histoscan.errors import HistoscanInputError
from histoscan.scoring import DEFAULT_THRESHOLD

ECE_BINS = 15
CI_KEYS = ("auc", "balanced_accuracy", "f1")
# elements of the (resamples x patches) weight matrix handled at once: small blocks stay in cache (measured
# 2x faster than 8M-element blocks) and bound memory
_BLOCK_ELEMS = 1_000_000
_PAIR_MAX_UNITS = 1000  # group bootstrap through the G x G pair table up to this many groups

# Hand-rolled in numpy rather than torchmetrics/scikit-learn: the bootstrap needs every metric computed for
# 1000+ weighted resamples at once (one sort, then matrix operations); those libraries loop per resample.
# tests/scoring/test_metrics.py checks each number against scikit-learn.


def _check(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise HistoscanInputError(f"labels/probabilities: lengths differ ({len(y)} vs {len(p)})")
    if len(y) == 0:
        raise HistoscanInputError("labels: no samples to score")
    if not np.isin(y, (0, 1)).all():
        raise HistoscanInputError("labels: must be 0/1 (unlabelled rows cannot be scored)")
    if not np.isfinite(p).all():
        raise HistoscanInputError("probabilities: contain NaN or infinity")
    return y.astype(np.float64), p


@dataclass(frozen=True)
class _Layout:
    """Patches arranged as [negatives by ascending score | positives by ascending score] for the AUC sums.

    `lo`/`hi`: for each positive, how many negatives score strictly below / at most its score.
    """

    perm: np.ndarray
    n_neg: int
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray, p: np.ndarray) -> _Layout:
        neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        neg, pos = neg[np.argsort(p[neg], kind="mergesort")], pos[np.argsort(p[pos], kind="mergesort")]
        lo, hi = np.searchsorted(p[neg], p[pos], "left"), np.searchsorted(p[neg], p[pos], "right")
        return cls(np.r_[neg, pos], len(neg), lo, hi)


def _weighted_stats(w: np.ndarray, lay: _Layout, k_neg: int, k_pos: int) -> tuple[np.ndarray, dict]:
    """ROC AUC and confusion cells for each row of weights `w` (B x N, columns in `lay` order).

    AUC is the weighted Mann-Whitney U: each positive counts the weight of negatives scoring below it, plus
    half of those tied with it (equal to the trapezoidal ROC area); rows lacking a class give NaN. As scores
    ascend within each class, the patches called positive are the last ones: negatives from `k_neg`, positives
    from `k_pos`, so the confusion cells come from the same running sums.
    """
    w_neg, w_pos = w[:, : lay.n_neg], w[:, lay.n_neg :]
    below = np.zeros((w.shape[0], lay.n_neg + 1), dtype=w.dtype)  # exclusive running sum of negative weight
    np.cumsum(w_neg, axis=1, out=below[:, 1:])
    under = below[:, lay.lo]
    if (lay.lo != lay.hi).any():
        under = 0.5 * (under + below[:, lay.hi])
    num = np.einsum("bi,bi->b", w_pos, under, dtype=np.float64)
    n_pos, n_neg = w_pos.sum(axis=1, dtype=np.float64), below[:, -1].astype(np.float64)
    tp = w_pos[:, k_pos:].sum(axis=1, dtype=np.float64)
    tn = below[:, k_neg].astype(np.float64)
    cells = {"tp": tp, "fn": n_pos - tp, "fp": n_neg - tn, "tn": tn}
    den = n_pos * n_neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan), cells


def _run_ends(sorted_p: np.ndarray) -> np.ndarray:
    return np.r_[np.flatnonzero(np.diff(sorted_p) != 0), len(sorted_p) - 1]


def _ratio(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _ba_f1(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    sens = _ratio(c["tp"], c["tp"] + c["fn"])
    spec = _ratio(c["tn"], c["tn"] + c["fp"])
    # F1 = 2TP / (2TP + FP + FN); defined as 0 when there is nothing to find and nothing flagged (sklearn)
    f1 = np.nan_to_num(_ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]), nan=0.0)
    return (sens + spec) / 2, f1


def average_precision(y: Any, p: Any) -> float:
    """Average precision (area under the step-wise precision-recall curve), as scikit-learn computes it."""
    y, p = _check(y, p)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = _run_ends(ps)  # end of each run of tied scores
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(y: Any, p: Any, n_bins: int = ECE_BINS) -> float:
    """ECE of the tumour probability: sum over equal-width bins of (bin share) x |positive rate - mean p|."""
    y, p = _check(y, p)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    gap = np.abs(np.bincount(idx, y, n_bins) - np.bincount(idx, p, n_bins))  # |sum y - sum p| per bin
    return float(gap.sum() / count.sum())


def _draw_counts(rng: np.random.Generator, n_rows: int, n_units: int) -> np.ndarray:
    """Bootstrap draw counts (n_rows x n_units): how often each unit was drawn in each resample."""
    draws = rng.integers(0, n_units, size=(n_rows, n_units))
    counts = np.bincount((draws + np.arange(n_rows)[:, None] * n_units).ravel(), minlength=n_rows * n_units)
    return counts.reshape(n_rows, n_units)


def _pair_tables(
    ys: np.ndarray, ps: np.ndarray, unit: np.ndarray, n_units: int, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group tables for the group bootstrap (patches sorted by ascending score).

    Returns:
        A (G x G): A[g, h] = correctly ordered (positive in g, negative in h) pairs, ties counting one half,
        so a resample drawing group g c_g times has AUC = c A c / ((c . pos)(c . neg)); and cells (G x 4):
        the tp, fn, fp, tn of each group at the threshold.
    """
    pos = ys == 1
    pos_scores, pos_units = ps[pos], unit[pos]
    neg_order = np.argsort(unit[~pos], kind="stable")  # by group; scores stay ascending within each group
    neg_scores, neg_units = ps[~pos][neg_order], unit[~pos][neg_order]
    bounds = np.searchsorted(neg_units, np.arange(n_units + 1))
    pairs = np.zeros((n_units, n_units))
    for h in range(n_units):
        s = neg_scores[bounds[h] : bounds[h + 1]]
        if len(s):
            lo, hi = np.searchsorted(s, pos_scores, "left"), np.searchsorted(s, pos_scores, "right")
            pairs[:, h] = np.bincount(pos_units, weights=lo + 0.5 * (hi - lo), minlength=n_units)
    cells = np.stack(
        [np.bincount(unit, weights=ys * q, minlength=n_units) for q in (pred, 1 - pred)]
        + [np.bincount(unit, weights=(1 - ys) * q, minlength=n_units) for q in (pred, 1 - pred)],
        axis=1,
    )
    return pairs, cells


def bootstrap_ci(
    y: Any,
    p: Any,
    threshold: float,
    groups: Sequence[str] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile 95 % intervals of AUC, balanced accuracy and F1, resampling groups (else patches).

    Vectorised over resamples. Group bootstrap (up to 1000 groups): AUC of every resample from a G x G table
    of ordered positive/negative pairs between groups (O(B G^2), ~0.3 s for 30k patches). Patch bootstrap
    (or more groups): a resamples x patches weight matrix (how often each patch is drawn) and running sums
    over the negatives sorted once by score. Resamples with a single class are dropped and counted.

    Returns:
        {"ci95": {metric: [lo, hi] or None}, "n_boot", "n_dropped", "unit": "group"|"patch", "n_units"}.
    """
    y, p = _check(y, p)
    if groups is not None and len(groups) != len(y):
        raise HistoscanInputError(f"groups: length {len(groups)} differs from {len(y)} labels")
    use_groups = groups is not None and all(str(g) != "" for g in groups)
    order = np.argsort(p, kind="mergesort")
    ys, ps = y[order], p[order]
    pred = (ps >= threshold).astype(np.float64)
    unit, n_units = None, len(y)
    if use_groups:
        _, unit = np.unique(np.asarray(groups, dtype=str)[order], return_inverse=True)
        n_units = int(unit.max()) + 1
    by_pairs = unit is not None and n_units <= _PAIR_MAX_UNITS
    if by_pairs:
        pairs, cells = _pair_tables(ys, ps, unit, n_units, pred)
    else:
        lay = _Layout.of(ys, ps)
        k_neg, k_pos = lay.n_neg - int(pred[ys == 0].sum()), len(lay.lo) - int(pred[ys == 1].sum())
        unit = None if unit is None else unit[lay.perm]  # patches are exchangeable units: no gather needed
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMS // (n_units if by_pairs else len(y)))
    auc, ba, f1 = [], [], []
    for start in range(0, n_boot, block):
        counts = _draw_counts(rng, min(block, n_boot - start), n_units)
        if by_pairs:
            c = counts.astype(np.float64)
            tp, fn, fp, tn = (c @ cells).T
            den = (tp + fn) * (fp + tn)
            auc.append(_ratio(((c @ pairs) * c).sum(axis=1), den))
            cc = {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
        else:
            # float32 keeps counts and their running sums exact (integers < 2**24) at half the memory traffic
            w = counts.astype(np.float32)
            w = w if unit is None else w[:, unit]
            a, cc = _weighted_stats(w, lay, k_neg, k_pos)
            auc.append(a)
        b, f = _ba_f1(cc)
        ba.append(b)
        f1.append(f)
    stats = {"auc": np.concatenate(auc), "balanced_accuracy": np.concatenate(ba), "f1": np.concatenate(f1)}
    keep = ~np.isnan(stats["auc"])  # AUC is undefined exactly when a resample lacks one class
    n_kept = int(keep.sum())
    ci = {
        k: [float(np.percentile(v[keep], 2.5)), float(np.percentile(v[keep], 97.5))] if n_kept else None
        for k, v in stats.items()
    }
    return {
        "ci95": ci,
        "n_boot": n_boot,
        "n_dropped": n_boot - n_kept,
        "unit": "group" if use_groups else "patch",
        "n_units": n_units,
    }


def _nan_to_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def compute_metrics(
    y: Any,
    p: Any,
    threshold: float,
    groups: Sequence[str] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of tumour probabilities `p` against 0/1 labels `y` at `threshold` (positive if p >= t).

    Args:
        y: 0/1 labels.
        p: tumour probabilities.
        threshold: decision threshold, chosen beforehand on validation data.
        groups: patient/slide of each patch; when every row has one, the bootstrap resamples groups.
        n_boot: bootstrap resamples (0 skips the intervals).
        seed: bootstrap seed.

    Returns:
        n, n_positive, auc, pr_auc, accuracy, balanced_accuracy, precision, recall, specificity, f1, brier,
        ece (15 bins), threshold, ci95 {auc, balanced_accuracy, f1: [lo, hi]} and a `bootstrap` summary.
        Undefined values (e.g. AUC with one class) are None.
    """
    y, p = _check(y, p)
    pred = p >= threshold
    lay = _Layout.of(y, p)
    k_neg, k_pos = lay.n_neg - int(pred[y == 0].sum()), len(lay.lo) - int(pred[y == 1].sum())
    auc_row, cells = _weighted_stats(np.ones((1, len(y))), lay, k_neg, k_pos)
    auc = float(auc_row[0])
    c = {k: float(v[0]) for k, v in cells.items()}
    ba, f1 = (float(v[0]) for v in _ba_f1({k: np.array([v]) for k, v in c.items()}))
    out: dict[str, Any] = {
        "n": len(y),
        "n_positive": int(y.sum()),
        "auc": _nan_to_none(auc),
        "pr_auc": _nan_to_none(average_precision(y, p)),
        "accuracy": (c["tp"] + c["tn"]) / len(y),
        "balanced_accuracy": _nan_to_none(ba),
        "precision": _nan_to_none(float(_ratio(c["tp"], c["tp"] + c["fp"]))),
        "recall": _nan_to_none(float(_ratio(c["tp"], c["tp"] + c["fn"]))),
        "specificity": _nan_to_none(float(_ratio(c["tn"], c["tn"] + c["fp"]))),
        "f1": f1,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
        "threshold": float(threshold),
        "confusion": {k: int(v) for k, v in c.items()},
    }
    if n_boot > 0:
        boot = bootstrap_ci(y, p, threshold, groups, n_boot, seed)
        out["ci95"] = boot.pop("ci95")
        out["bootstrap"] = boot
    else:
        out["ci95"] = {k: None for k in CI_KEYS}
    return out


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, TPR, FPR) with 'positive if p >= threshold' at each distinct score."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = _run_ends(ps)
    tps = np.cumsum(ys)[last]
    fps = (last + 1) - tps
    return ps[last], tps / max(y.sum(), 1), fps / max(len(y) - y.sum(), 1)


def roc_curve(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve from (0, 0): (false positive rate, true positive rate, threshold) at each distinct score."""
    y, p = _check(y, p)
    thr, tpr, fpr = _roc_points(y, p)
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]


def pr_curve(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve (recall ascending from 0, precision) at each distinct score."""
    y, p = _check(y, p)
    order = np.argsort(-p, kind="mergesort")
    last = _run_ends(p[order])
    tps = np.cumsum(y[order])[last]
    precision = tps / (last + 1)
    return np.r_[0.0, tps / max(y.sum(), 1)], np.r_[precision[0], precision]


def reliability(y: Any, p: Any, n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: (mean probability, fraction positive, count); empty bins give NaN."""
    y, p = _check(y, p)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(idx, p, n_bins) / count, np.bincount(idx, y, n_bins) / count, count


def select_threshold(
    y: Any,
    p: Any,
    method: Literal["youden", "sensitivity"] = "youden",
    target_sensitivity: float | None = None,
) -> float:
    """Choose a decision threshold on validation predictions (positive if p >= threshold).

    Args:
        y: 0/1 validation labels (both classes needed).
        p: validation probabilities.
        method: "youden" maximises sensitivity + specificity - 1; "sensitivity" takes the highest threshold
            (so the best specificity) whose sensitivity is at least `target_sensitivity`.
        target_sensitivity: in (0, 1], required for method "sensitivity".

    Returns:
        One of the observed probabilities.
    """
    y, p = _check(y, p)
    if y.min() == y.max():
        raise HistoscanInputError("validation labels: need both classes to choose a threshold")
    thr, tpr, fpr = _roc_points(y, p)
    if method == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])  # first maximum = highest such threshold
    if method == "sensitivity":
        if target_sensitivity is None or not 0 < target_sensitivity <= 1:
            raise HistoscanInputError(f"--target-sensitivity {target_sensitivity}: must be in (0, 1]")
        return float(thr[int(np.argmax(tpr >= target_sensitivity - 1e-12))])
    raise HistoscanInputError(f"threshold method {method!r}: choose youden or sensitivity")


def choose_run_threshold(
    y_val: Any, p_val: Any, target_sensitivity: float | None = None, rule: str | None = None
) -> dict[str, Any]:
    """The content of RUN/threshold.json, chosen on the validation split.

    `rule` "youden" (Youden's J; the default), "sensitivity" (the most specific threshold reaching
    `target_sensitivity`; implied when only that is given) or "0.5" (meaningful for calibrated probabilities;
    its validation sensitivity/specificity are still recorded). With a validation split lacking a class, 0.5 is
    kept and the reason recorded.
    """
    y, p = _check(y_val, p_val)
    info: dict[str, Any] = {"n_val": len(y), "n_val_positive": int(y.sum())}
    if y.min() == y.max():
        return {
            "threshold": DEFAULT_THRESHOLD,
            "method": "default",
            "note": "validation split has one class",
            **info,
        }
    method = rule or ("sensitivity" if target_sensitivity is not None else "youden")
    t = DEFAULT_THRESHOLD if method == "0.5" else select_threshold(y, p, method, target_sensitivity)
    pred = p >= t
    info["val_sensitivity"] = float(pred[y == 1].mean())
    info["val_specificity"] = float((~pred[y == 0]).mean())
    extra = {"target_sensitivity": float(target_sensitivity)} if target_sensitivity is not None else {}
    return {"threshold": t, "method": method, **extra, **info}
