"""CvDir: the one owner of a cross-validation folder's layout (what `histoscan cv` writes).

fold-<k>/ is fold k's run folder (a :class:`RunDir`, evaluated into its own RUN/eval-<data>/), cv.json the
pooled metrics with the per-fold figures, predictions.csv every fold's held-out predictions with its fold and
decision, final-config.yaml the cross-validated options for `histoscan train --config`. A tune trial's folds
(TUNE/trials/<n>/) use the same fold layout.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from histoscan.folders.run import RunDir
from histoscan.utils.fs import atomic_path, atomic_write_json


class CvDir:
    """A cross-validation folder: its fold runs and pooled files."""

    FOLD = "fold-"  # fold k's run folder is fold-<k>
    SUMMARY = "cv.json"
    PREDICTIONS = "predictions.csv"
    FINAL_CONFIG = "final-config.yaml"
    PREDICTION_COLUMNS: ClassVar[list[str]] = ["id", "group", "label", "probability", "fold", "decision", "fitted"]

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CvDir({str(self.path)!r})"

    def fold_path(self, k: int) -> Path:
        """Fold k's run folder."""
        return self.path / f"{self.FOLD}{k}"

    def fold_runs(self) -> list[Path]:
        """The fold run folders that hold a run (config.yaml), in fold order; [] when this is no cv folder
        (not a folder, or a run folder itself)."""
        if not self.path.is_dir() or RunDir.is_run(self.path):
            return []
        runs = [d for d in self.path.glob(f"{self.FOLD}*") if d.is_dir() and RunDir(d).config_path.is_file()]
        return sorted(runs, key=self._fold_number)

    @staticmethod
    def _fold_number(d: Path) -> int:
        k = d.name.split("-")[-1]
        return int(k) if k.isdigit() else 0

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def predictions_path(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def final_config_path(self) -> Path:
        return self.path / self.FINAL_CONFIG

    def write_summary(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, result)

    def write_predictions(self, rows: Iterable[dict[str, Any]]) -> None:
        """predictions.csv: id,group,label,probability,fold,decision,fitted (how the image was fitted to the model's
        size, as in evaluate's predictions; empty when not fitted or not known); other keys of `rows` left out."""
        with atomic_path(self.predictions_path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.PREDICTION_COLUMNS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in self.PREDICTION_COLUMNS} for r in rows)
