"""The one sigmoid: stable at the extremes, equal to the logistic function elsewhere."""

from __future__ import annotations

import numpy as np

from histoscan.utils.numeric import sigmoid


def test_sigmoid_values_and_stability() -> None:
    z = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])
    with np.errstate(over="raise"):
        p = sigmoid(z)
    np.testing.assert_allclose(p[1:-1], 1 / (1 + np.exp(-z[1:-1])), rtol=1e-12)
    assert p[0] == 0.0 and p[-1] == 1.0 and p[3] == 0.5
    np.testing.assert_allclose(sigmoid(z) + sigmoid(-z), 1.0, rtol=1e-12)
