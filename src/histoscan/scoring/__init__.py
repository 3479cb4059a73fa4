"""Scoring rules shared by the stages: metrics with bootstrap CIs, threshold choice, calibration, decisions.

Below every stage (training fits a run's decision with them, cv pools fold predictions, evaluation reports),
above utils. `DEFAULT_THRESHOLD` is the one decision threshold used when a model carries none.
"""

DEFAULT_THRESHOLD = 0.5  # positive when p >= 0.5: the decision of a model without a chosen threshold

__all__ = ["DEFAULT_THRESHOLD"]
