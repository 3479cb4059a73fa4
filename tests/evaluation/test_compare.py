"""Paired bootstrap of two models on the same patches: the weighted AUC, the CI, and its behaviour."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from histoscan.errors import HistoscanInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # benchmark code, not the package
from paired_bootstrap import paired_bootstrap, weighted_auc  # noqa: E402


def test_weighted_auc_equals_sklearn_with_sample_weights_and_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 2)  # rounded: many ties
    w = rng.integers(0, 4, (5, 300)).astype(float)
    got = weighted_auc(y, p, w)
    for k in range(5):
        assert got[k] == pytest.approx(roc_auc_score(y, p, sample_weight=w[k]), abs=1e-12)


def test_identical_models_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    r = paired_bootstrap(y, p, p, n_boot=200)
    assert r["auc"]["diff"] == 0.0 and r["auc"]["ci95"] == [0.0, 0.0] and r["unit"] == "patch"


def test_a_clearly_better_model_has_a_ci_above_zero_and_groups_widen_it() -> None:
    rng = np.random.default_rng(2)
    groups = np.repeat([f"p{i}" for i in range(40)], 10)
    y = rng.integers(0, 2, 400)
    good = y * 0.6 + rng.random(400) * 0.7
    weak = y * 0.2 + rng.random(400) * 0.7
    d_good, d_weak = (good > 0.65).astype(int), (weak > 0.45).astype(int)
    r = paired_bootstrap(y, good, weak, groups, d_good, d_weak, n_boot=500)
    assert r["auc"]["a"] == pytest.approx(roc_auc_score(y, good)) and r["auc"]["b"] == pytest.approx(
        roc_auc_score(y, weak)
    )
    assert (
        r["auc"]["ci95"][0] > 0 and r["auc"]["p_le_0"] == 0.0 and r["unit"] == "group" and r["n_units"] == 40
    )
    assert r["balanced_accuracy"]["a"] == pytest.approx(balanced_accuracy_score(y, d_good))
    assert r["f1"]["b"] == pytest.approx(f1_score(y, d_weak))
    lo, hi = r["auc"]["ci95"]
    assert lo <= r["auc"]["diff"] <= hi
    by_patch = paired_bootstrap(y, good, weak, None, n_boot=500)
    twin_a, twin_b = y * 0.4 + rng.random(400), y * 0.4 + rng.random(400)  # two equally good models
    close = paired_bootstrap(y, twin_a, twin_b, groups, n_boot=500)
    assert close["auc"]["ci95"][0] < 0 < close["auc"]["ci95"][1]  # no real difference: the CI straddles zero
    assert by_patch["auc"]["diff"] == r["auc"]["diff"]


def test_bad_input() -> None:
    with pytest.raises(HistoscanInputError, match="both classes"):
        paired_bootstrap([1, 1], [0.2, 0.3], [0.1, 0.2])
