"""Metrics against scikit-learn, bootstrap CIs against a brute-force loop, and threshold selection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from tolerance import F32_EPS

import histoscan.scoring.metrics as hm
from histoscan.errors import HistoscanInputError
from histoscan.scoring.metrics import (
    bootstrap_ci,
    choose_run_threshold,
    compute_metrics,
    roc_curve,
    select_threshold,
)


def _data(n: int = 500, seed: int = 0, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * (y - 0.5) * 2)))
    return y, (p.round(decimals) if decimals is not None else p)


def _clustered(n_groups: int, per_group: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patients with a shared random effect on the score: patches of one patient are correlated."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    y = (rng.random(n_groups * per_group) < rng.uniform(0.1, 0.9, n_groups)[g]).astype(int)
    logit = 1.5 * (y - 0.5) * 2 + rng.normal(0, 1.5, n_groups)[g] + rng.normal(0, 0.5, len(g))
    return y, 1 / (1 + np.exp(-logit)), g.astype(str)


@pytest.mark.parametrize("decimals", [None, 2])  # unique scores, and many ties
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_every_metric_matches_sklearn(decimals: int | None, threshold: float) -> None:
    y, p = _data(decimals=decimals)
    m = compute_metrics(y, p, threshold, n_boot=0)
    pred = (p >= threshold).astype(int)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["confusion"] == {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
    assert (m["n"], m["n_positive"], m["threshold"]) == (500, int(y.sum()), threshold)


def test_ece_matches_torchmetrics_and_a_loop() -> None:
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    y, p = _data(2000, seed=4)
    ece = compute_metrics(y, p, 0.5, n_boot=0)["ece"]
    loop = 0.0
    for b in range(15):
        inside = (p >= b / 15) & (p < (b + 1) / 15)
        if inside.any():
            loop += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    assert ece == pytest.approx(loop, abs=1e-12)
    tm = binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=15, norm="l1").item()
    assert ece == pytest.approx(tm, abs=F32_EPS * len(p))  # torchmetrics sums the bins' means in float32


def test_roc_curve_matches_sklearn() -> None:
    y, p = _data(decimals=2)
    fpr, tpr, thr = roc_curve(y, p)
    sf, st, sthr = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    np.testing.assert_allclose(thr[1:], sthr[1:])


def test_one_class_gives_none_not_nan() -> None:
    m = compute_metrics(np.zeros(20, int), np.linspace(0, 1, 20), 0.5, n_boot=50)
    assert m["auc"] is None and m["pr_auc"] is None and m["recall"] is None
    assert m["specificity"] == pytest.approx(0.5)
    assert m["ci95"] == {"auc": None, "balanced_accuracy": None, "f1": None}
    assert m["bootstrap"]["n_dropped"] == 50


def _brute_force_ci(y, p, t, groups, n_boot, seed):
    """The bootstrap written as a plain loop with scikit-learn, drawing exactly as bootstrap_ci does."""
    _, unit = np.unique(groups, return_inverse=True)
    n_units = unit.max() + 1
    draws = np.random.default_rng(seed).integers(0, n_units, size=(n_boot, n_units))
    stats = {"auc": [], "balanced_accuracy": [], "f1": []}
    dropped = 0
    for row in draws:
        idx = np.concatenate([np.flatnonzero(unit == u) for u in row])
        yy, pp = y[idx], p[idx]
        if yy.min() == yy.max():
            dropped += 1
            continue
        stats["auc"].append(skm.roc_auc_score(yy, pp))
        stats["balanced_accuracy"].append(skm.balanced_accuracy_score(yy, pp >= t))
        stats["f1"].append(skm.f1_score(yy, pp >= t))
    ci = {k: [np.percentile(v, 2.5), np.percentile(v, 97.5)] for k, v in stats.items()}
    return ci, dropped


@pytest.mark.parametrize("pair_table", [True, False])
def test_group_bootstrap_equals_brute_force_loop(pair_table: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    y, p, g = _clustered(6, 8, seed=1)  # few groups: some resamples have one class and are dropped
    p = p.round(1)  # ties across groups
    if not pair_table:
        monkeypatch.setattr(hm, "_PAIR_MAX_UNITS", 0)  # the weight-matrix path instead of the pair table
    got = bootstrap_ci(y, p, 0.5, g, n_boot=120, seed=7)
    want, dropped = _brute_force_ci(y, p, 0.5, g, 120, 7)
    assert got["unit"] == "group" and got["n_units"] == 6
    assert got["n_dropped"] == dropped
    for k in want:
        np.testing.assert_allclose(got["ci95"][k], want[k], atol=1e-6)


def test_patch_bootstrap_equals_brute_force_loop() -> None:
    y, p = _data(60, seed=2, decimals=1)
    # bootstrap_ci numbers patches negatives-then-positives by ascending score: name them so (same draws)
    neg, pos = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    order = np.r_[neg[np.argsort(p[neg], kind="stable")], pos[np.argsort(p[pos], kind="stable")]]
    ids = np.empty(60, dtype="<U3")
    ids[order] = [f"{k:03d}" for k in range(60)]
    got = bootstrap_ci(y, p, 0.5, None, n_boot=100, seed=3)
    want, dropped = _brute_force_ci(y, p, 0.5, ids, 100, 3)
    assert got["unit"] == "patch" and got["n_dropped"] == dropped == 0
    for k in want:
        np.testing.assert_allclose(got["ci95"][k], want[k], atol=1e-6)


def test_ci_contains_estimate_and_is_seeded() -> None:
    y, p, g = _clustered(40, 20)
    a = compute_metrics(y, p, 0.5, g, seed=1)
    assert a["ci95"] == compute_metrics(y, p, 0.5, g, seed=1)["ci95"]
    assert a["ci95"] != compute_metrics(y, p, 0.5, g, seed=2)["ci95"]
    for k in ("auc", "balanced_accuracy", "f1"):
        lo, hi = a["ci95"][k]
        assert lo <= a[k] <= hi and hi - lo > 0.01
    assert a["bootstrap"] == {"n_boot": 1000, "n_dropped": 0, "unit": "group", "n_units": 40}


def test_ci_narrows_with_more_groups() -> None:
    widths = []
    for n_groups in (15, 60, 240):
        y, p, g = _clustered(n_groups, 10, seed=5)
        lo, hi = compute_metrics(y, p, 0.5, g)["ci95"]["auc"]
        widths.append(hi - lo)
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]


def test_group_bootstrap_wider_than_patch_bootstrap_on_clustered_data() -> None:
    y, p, g = _clustered(30, 40, seed=6)
    grouped = compute_metrics(y, p, 0.5, g)["ci95"]
    patches = compute_metrics(y, p, 0.5, None)["ci95"]
    for k in ("auc", "balanced_accuracy", "f1"):
        assert grouped[k][1] - grouped[k][0] > 1.5 * (patches[k][1] - patches[k][0])


def test_missing_groups_fall_back_to_patches() -> None:
    y, p, g = _clustered(10, 10)
    g = g.copy()
    g[3] = ""
    assert bootstrap_ci(y, p, 0.5, g, n_boot=20)["unit"] == "patch"


def test_youden_threshold_matches_sklearn_roc() -> None:
    y, p = _data(decimals=2)
    fpr, tpr, thr = skm.roc_curve(y, p)
    assert select_threshold(y, p) == pytest.approx(thr[np.argmax(tpr - fpr)])


def test_sensitivity_threshold_is_the_most_specific_reaching_target() -> None:
    y, p = _data()
    t = select_threshold(y, p, "sensitivity", target_sensitivity=0.9)
    assert (p[y == 1] >= t).mean() >= 0.9
    higher = np.min(p[p > t])
    assert (p[y == 1] >= higher).mean() < 0.9
    info = choose_run_threshold(y, p, target_sensitivity=0.9)
    assert info["threshold"] == t and info["method"] == "sensitivity" and info["val_sensitivity"] >= 0.9
    assert choose_run_threshold(y, p)["method"] == "youden"


def test_threshold_errors_and_one_class_default() -> None:
    y, p = _data(50)
    with pytest.raises(HistoscanInputError, match="target-sensitivity"):
        select_threshold(y, p, "sensitivity")
    with pytest.raises(HistoscanInputError, match="both classes"):
        select_threshold(np.ones(5), np.linspace(0, 1, 5))
    assert choose_run_threshold(np.ones(5), np.linspace(0, 1, 5))["threshold"] == 0.5


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1], [0.5], "lengths differ"),
        ([0, 2], [0.1, 0.2], "0/1"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([], [], "no"),
    ],
)
def test_bad_inputs_raise(y, p, match) -> None:
    with pytest.raises(HistoscanInputError, match=match):
        compute_metrics(y, p, 0.5)
