"""TuneDir: the one owner of a tune folder's layout (what `histoscan tune` writes).

study.json (the study's identity: data, folds, search space, fixed options), study.db (Optuna's SQLite
storage), trials.csv (every trial), best.yaml (the best complete trial's TrainConfig) and trials/<n>/, trial
n's fold runs in the cross-validation layout (trials/<n>/fold-<k>/, see :class:`CvDir`).
"""

from __future__ import annotations

from pathlib import Path

from histoscan.folders.cv import CvDir
from histoscan.folders.run import RunDir


class TuneDir:
    """A tune folder: where each of its files is."""

    RECORD = "study.json"
    DB = "study.db"
    TRIALS_CSV = "trials.csv"
    BEST = "best.yaml"
    IMPORTANCE_CSV = "importance.csv"
    IMPORTANCE_PNG = "importance.png"
    TRIALS = "trials"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TuneDir({str(self.path)!r})"

    @property
    def record_path(self) -> Path:
        return self.path / self.RECORD

    @property
    def db_path(self) -> Path:
        return self.path / self.DB

    @property
    def trials_csv(self) -> Path:
        return self.path / self.TRIALS_CSV

    @property
    def best_path(self) -> Path:
        return self.path / self.BEST

    @property
    def importance_csv(self) -> Path:
        return self.path / self.IMPORTANCE_CSV

    @property
    def importance_png(self) -> Path:
        return self.path / self.IMPORTANCE_PNG

    def trial(self, number: int) -> CvDir:
        """Trial `number`'s folder, holding its fold runs."""
        return CvDir(self.path / self.TRIALS / str(number))

    def trial_fold(self, number: int, k: int) -> Path:
        """The run folder of trial `number`, fold k."""
        return self.trial(number).fold_path(k)

    def trial_configs(self) -> list[Path]:
        """config.yaml of every trial's fold runs, sorted."""
        pattern = f"{self.TRIALS}/*/{CvDir.FOLD}*/{RunDir.CONFIG}"
        return sorted(self.path.glob(pattern))
