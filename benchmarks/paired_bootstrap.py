"""Paired comparison of two models scored on the same patches: differences with a paired bootstrap CI.

Both models are resampled together (the same patients — or patches, when there are no groups — in every
resample), so the interval reflects the difference itself, not two independent uncertainties. Benchmark code
(compare_recipes.py, ensemble_gain.py, compare_external.py; tests/evaluation/test_compare.py), not part of the
installed package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from histoscan.errors import HistoscanInputError


def weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of scores `p` for 0/1 labels `y` with row weights `w` (B x n: one AUC per row of weights).

    Ties count one half, as in the Mann-Whitney statistic; a weight is a row's multiplicity in a resample.
    """
    w = np.atleast_2d(w).astype(np.float64)
    order = np.argsort(p, kind="stable")
    ps, ys, ws = p[order], y[order].astype(bool), w[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # first row of each run of equal scores
    group = np.cumsum(np.r_[True, ps[1:] != ps[:-1]]) - 1
    neg_in_group = np.add.reduceat(ws * ~ys, starts, axis=1)  # B x groups
    below = np.cumsum(neg_in_group, axis=1) - neg_in_group
    credit = below[:, group] + 0.5 * neg_in_group[:, group]  # B x n: negatives a row's score beats
    pos_w, neg_w = (ws * ys).sum(1), (ws * ~ys).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pos_w * neg_w > 0, (ws * ys * credit).sum(1) / (pos_w * neg_w), np.nan)


def _weighted_ba_f1(y: np.ndarray, d: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    yb, db = y.astype(bool), d.astype(bool)
    tp, fn = (w * (yb & db)).sum(1), (w * (yb & ~db)).sum(1)
    tn, fp = (w * (~yb & ~db)).sum(1), (w * (~yb & db)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ba = 0.5 * (tp / (tp + fn) + tn / (tn + fp))
        f1 = 2 * tp / (2 * tp + fp + fn)
    return ba, f1


def _resample_weights(n: int, groups: Sequence[str] | None, n_boot: int, seed: int) -> np.ndarray:
    """B x n row multiplicities: whole groups drawn with replacement (else rows), row 0 = the data itself."""
    rng = np.random.default_rng(seed)
    if groups is None:
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
        return np.vstack([np.ones(n), counts])
    units, unit_of_row = np.unique(np.asarray(groups), return_inverse=True)
    counts = rng.multinomial(len(units), np.full(len(units), 1.0 / len(units)), size=n_boot)
    return np.vstack([np.ones(n), counts[:, unit_of_row]])


def paired_bootstrap(
    y: Any,
    p_a: Any,
    p_b: Any,
    groups: Sequence[str] | None = None,
    d_a: Any = None,
    d_b: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Differences a - b of AUC (and, with decisions, balanced accuracy and F1) with paired 95 % CIs.

    Args:
        y: 0/1 labels of the patches both models scored.
        p_a, p_b: the two models' tumour probabilities for the same patches, in the same order.
        groups: patient/slide of each patch: resample whole groups (patches otherwise).
        d_a, d_b: optional 0/1 decisions (each model at its own thresholds) for balanced accuracy and F1.
        n_boot: resamples; seed: their seed.

    Returns:
        {metric: {"a", "b", "diff", "ci95": [low, high], "p_le_0": share of resamples with diff <= 0}},
        plus "n", "unit" ("group"/"patch"), "n_units", "n_boot", "n_dropped" (resamples with one class).
    """
    y = np.asarray(y).astype(int)
    p_a, p_b = np.asarray(p_a, np.float64), np.asarray(p_b, np.float64)
    if not (len(y) == len(p_a) == len(p_b)) or len(np.unique(y)) < 2:
        raise HistoscanInputError(
            "paired comparison: needs the same patches for both models and both classes"
        )
    w = _resample_weights(len(y), groups, n_boot, seed)
    values = {"auc": (weighted_auc(y, p_a, w), weighted_auc(y, p_b, w))}
    if d_a is not None and d_b is not None:
        (ba_a, f1_a), (ba_b, f1_b) = (
            _weighted_ba_f1(y, np.asarray(d_a), w),
            _weighted_ba_f1(y, np.asarray(d_b), w),
        )
        values.update(balanced_accuracy=(ba_a, ba_b), f1=(f1_a, f1_b))
    out: dict[str, Any] = {
        "n": len(y),
        "unit": "group" if groups is not None else "patch",
        "n_units": len(set(groups)) if groups is not None else len(y),
        "n_boot": n_boot,
    }
    for name, (a, b) in values.items():
        diff = a[1:] - b[1:]
        ok = np.isfinite(diff)
        out["n_dropped"] = int((~ok).sum())
        lo, hi = np.percentile(diff[ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan)
        out[name] = {
            "a": float(a[0]),
            "b": float(b[0]),
            "diff": float(a[0] - b[0]),
            "ci95": [float(lo), float(hi)],
            "p_le_0": float((diff[ok] <= 0).mean()) if ok.any() else float("nan"),
        }
    return out
