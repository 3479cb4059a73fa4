"""Numerics shared by every stage: the one sigmoid."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Numerically stable logistic function, float64 (exp(-log(1 + exp(-z))) never overflows)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))
