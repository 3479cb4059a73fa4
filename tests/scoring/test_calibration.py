"""Temperature scaling: recovers a known temperature, is the NLL minimum, keeps the ranking, improves ECE."""

from __future__ import annotations

import numpy as np
import pytest

from histoscan.errors import HistoscanInputError
from histoscan.scoring.calibration import calibration_report, fit_temperature, nll
from histoscan.scoring.metrics import compute_metrics
from histoscan.utils.numeric import sigmoid


def _overconfident(n: int, true_t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z / true_t) for logits z: a model whose logits are true_t times too large."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    y = (rng.random(n) < sigmoid(z / true_t)).astype(int)
    return y, z


def test_recovers_a_known_temperature() -> None:
    for true_t in (0.5, 2.5):
        y, z = _overconfident(40_000, true_t, seed=1)
        t = fit_temperature(y, z)
        # the MLE's standard error at n = 40,000 is ~1 % of T here; 5 % is several standard errors
        assert t == pytest.approx(true_t, rel=0.05)


def test_fit_is_the_nll_minimum_and_keeps_the_ranking() -> None:
    y, z = _overconfident(3000, 3.0, seed=2)
    t = fit_temperature(y, z)
    for step in (0.9, 1.1):
        assert nll(y, z, t) < nll(y, z, t * step)
    before = compute_metrics(y, sigmoid(z), 0.5, n_boot=0)["auc"]
    after = compute_metrics(y, sigmoid(z / t), 0.5, n_boot=0)["auc"]
    assert after == before  # a monotone map of the scores: the same AUC, exactly


def test_report_shows_ece_brier_and_nll_falling_on_an_overconfident_model() -> None:
    y, z = _overconfident(5000, 3.0, seed=3)
    r = calibration_report(y, z, fit_temperature(y, z))
    assert r["ece_before"] > 0.1 and r["ece_after"] < 0.03
    assert r["brier_after"] < r["brier_before"] and r["nll_after"] < r["nll_before"]
    assert nll([1, 0], [0.0, 0.0]) == pytest.approx(np.log(2))  # p = 0.5 for both: log 2 each


def test_one_class_or_bad_logits_are_input_errors() -> None:
    with pytest.raises(HistoscanInputError, match="both classes"):
        fit_temperature([1, 1, 1], [0.1, 2.0, 3.0])
    with pytest.raises(HistoscanInputError, match="not all finite"):
        fit_temperature([0, 1], [0.0, np.inf])
