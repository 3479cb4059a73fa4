"""EvalDir: the one owner of an evaluation folder's layout (what `histoscan evaluate` writes; by default
RUN/eval-<data name>/, see :meth:`RunDir.eval_dir`).

metrics.json (compute_metrics keys plus context), predictions.csv (one row per scored patch), report.html and
its figures roc.png, pr.png, confusion.png, calibration.png and, with the run's training curves, curves.png.
`histoscan cv` reads each fold's metrics.json and predictions.csv back through this class.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from histoscan.errors import HistoscanInputError
from histoscan.utils.fs import atomic_path, atomic_write_json


class EvalDir:
    """An evaluation folder: where each of its files is, and how the shared ones are read and written."""

    METRICS = "metrics.json"
    PREDICTIONS = "predictions.csv"
    REPORT = "report.html"
    ROC = "roc.png"
    PR = "pr.png"
    CONFUSION = "confusion.png"
    CALIBRATION = "calibration.png"
    CURVES = "curves.png"
    PREDICTION_COLUMNS: ClassVar[list[str]] = ["id", "group", "label", "probability", "fitted"]

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"EvalDir({str(self.path)!r})"

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def predictions_path(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    def figure(self, kind: str) -> Path:
        """The PNG of figure `kind`: "roc", "pr", "confusion", "calibration" or "curves"."""
        names = {
            "roc": self.ROC,
            "pr": self.PR,
            "confusion": self.CONFUSION,
            "calibration": self.CALIBRATION,
            "curves": self.CURVES,
        }
        return self.path / names[kind]

    def complete(self) -> bool:
        """Whether the evaluation finished (metrics.json and predictions.csv are both there)."""
        return self.metrics_path.is_file() and self.predictions_path.is_file()

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics_path, metrics)

    def read_metrics(self) -> dict[str, Any]:
        """metrics.json; a missing or malformed file is an input error naming it."""
        try:
            info = json.loads(self.metrics_path.read_text())
        except (OSError, ValueError) as e:
            raise HistoscanInputError(f"{self.metrics_path}: not readable ({e})") from None
        if not isinstance(info, dict):
            raise HistoscanInputError(f"{self.metrics_path}: expected a JSON object")
        return info

    def write_predictions(
        self, ids: Sequence[str], groups: Sequence[str], y: np.ndarray, p: np.ndarray, fitted: Sequence[str]
    ) -> None:
        """predictions.csv: id,group,label,probability,fitted (how the image was fitted to the model's size)."""
        with atomic_path(self.predictions_path) as tmp, tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.PREDICTION_COLUMNS)
            w.writerows(
                (i, g, int(lab), f"{q:.6f}", fit)
                for i, g, lab, q, fit in zip(ids, groups, y, p, fitted, strict=True)
            )

    def read_predictions(self) -> list[dict[str, str]]:
        """predictions.csv as rows (values as written)."""
        with self.predictions_path.open(newline="") as f:
            return list(csv.DictReader(f))
