"""RunDir: the one owner of a run folder's layout. No other module spells a run's file names.

A run folder holds config.yaml (TrainConfig), split.csv (id,label,group,split; read and written here),
data.json (training store, checksum, counts), metrics.csv (one row per epoch, numbered from 1 as the console
and the report number them; runs written before that are 0-based and read back renumbered), calibration.json
(the temperature fitted on the validation split; p = sigmoid(logit / T)), threshold.json (decision threshold
chosen on the calibrated validation probabilities), checkpoints/{best,last}.ckpt, with --skip-bad skipped.csv,
with --logger tensorboard / mlflow logs/ / mlruns/; other commands add model.onnx (`histoscan export`) and
eval-<data name>/ (`histoscan evaluate`'s default output, an EvalDir). A new run is built in a hidden
sibling folder (:meth:`RunDir.stage`) and moved into place by :meth:`RunDir.commit` once training has started,
so a failed start leaves nothing behind; every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.utils.fs import atomic_path, atomic_write_json, guard_output, make_staging_dir, replace_folder


class RunDir:
    """A run folder: where each of its files is, and how each is read and written."""

    CONFIG = "config.yaml"
    SPLIT = "split.csv"
    DATA = "data.json"
    METRICS = "metrics.csv"
    THRESHOLD = "threshold.json"
    CALIBRATION = "calibration.json"
    CHECKPOINTS = "checkpoints"
    BEST = "best"  # checkpoint file stems, as Lightning's ModelCheckpoint(filename=...) takes them
    LAST = "last"
    SKIPPED = "skipped.csv"  # with --skip-bad: the files the training store skipped as unreadable
    LOGS = "logs"  # --logger tensorboard
    MLRUNS = "mlruns"  # --logger mlflow
    ONNX = "model.onnx"  # written by `histoscan export`
    EVAL = "eval-"  # prefix of `histoscan evaluate`'s default output folder, RUN/eval-<data name>/

    def __init__(self, path: str | Path, final: Path | None = None):
        self.path = Path(path)
        self.final = final if final is not None else self.path  # where a staged run will be moved

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- paths -------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def split_path(self) -> Path:
        return self.path / self.SPLIT

    @property
    def data_path(self) -> Path:
        return self.path / self.DATA

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def threshold_path(self) -> Path:
        return self.path / self.THRESHOLD

    @property
    def calibration_path(self) -> Path:
        return self.path / self.CALIBRATION

    @property
    def skipped_path(self) -> Path:
        return self.path / self.SKIPPED

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoints / f"{self.BEST}.ckpt"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / f"{self.LAST}.ckpt"

    @property
    def onnx_path(self) -> Path:
        return self.path / self.ONNX

    def final_path(self, name: str) -> Path:
        """Where file `name` of this run will be once committed (Lightning writes there after the move)."""
        return self.final / name

    def eval_dir(self, data: str | Path) -> Path:
        """Default output folder of `histoscan evaluate` on DATA: RUN/eval-<data name>."""
        name = Path(data).expanduser().resolve().name or "data"
        return self.path / f"{self.EVAL}{Path(name).stem}"

    @classmethod
    def is_last_checkpoint(cls, path: str | Path | None) -> bool:
        """Whether `path` names a run's last-epoch checkpoint (last.ckpt) rather than its best one."""
        return path is not None and Path(path).stem == cls.LAST and Path(path).suffix == ".ckpt"

    # ---- finding runs ------------------------------------------------------------------------------------
    @classmethod
    def is_run(cls, path: str | Path) -> bool:
        """Whether `path` is a run folder (has config.yaml or a checkpoints/ folder)."""
        p = Path(path)
        return p.is_dir() and ((p / cls.CONFIG).is_file() or (p / cls.CHECKPOINTS).is_dir())

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder; raises naming `path` when it is not one."""
        p = Path(path).expanduser()
        if not p.exists():
            raise HistoscanInputError(f"{p}: no such run folder")
        if not cls.is_run(p):
            raise HistoscanInputError(f"{p}: not a run folder (no {cls.CONFIG} or {cls.CHECKPOINTS}/)")
        return cls(p)

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir | None:
        """The run a checkpoint file belongs to (RUN/checkpoints/x.ckpt with RUN/config.yaml), else None."""
        p = Path(ckpt)
        run = p.parent.parent if p.parent.name == cls.CHECKPOINTS else p.parent
        return cls(run) if (run / cls.CONFIG).is_file() else None

    def checkpoint(self) -> Path:
        """best.ckpt, else last.ckpt; raises when the run has neither (e.g. training never finished an epoch)."""
        for path in (self.best_ckpt, self.last_ckpt):
            if path.is_file():
                return path
        best, last = (p.relative_to(self.path) for p in (self.best_ckpt, self.last_ckpt))
        raise HistoscanInputError(f"{self.path}: run has no checkpoint ({best} or {last.name})")

    # ---- creating a run ----------------------------------------------------------------------------------
    @classmethod
    def stage(cls, out: str | Path, force: bool) -> RunDir:
        """A new run, built in a hidden sibling of `out` until :meth:`commit`.

        A non-empty `out` needs `force`; it is replaced only at commit, so a start that fails leaves it as it was.
        """
        final = guard_output(out, force, "folder", "--out").resolve()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_staging_dir(final, ".staging")
        return cls(tmp, final=final)

    @property
    def staged(self) -> bool:
        """Whether this run is still in its staging folder."""
        return self.path != self.final

    def commit(self) -> RunDir:
        """Move a staged run into place (replacing what --force allowed to replace); no-op when not staged."""
        if self.staged:
            replace_folder(self.path, self.final)
            self.path = self.final
        return self

    def discard(self) -> None:
        """Remove a staged (uncommitted) run folder."""
        if self.staged and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    # ---- files -------------------------------------------------------------------------------------------
    def read_config(self) -> TrainConfig:
        """RUN/config.yaml as a validated TrainConfig."""
        return TrainConfig.load(self.config_path)

    def write_config(self, config: TrainConfig) -> None:
        config.save(self.config_path)

    def read_data(self) -> dict[str, Any]:
        """RUN/data.json (training store, checksum, image size, µm/px, split counts); {} when absent."""
        return self._read_json(self.data_path) or {}

    def write_data(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.data_path, info)

    def read_split(self) -> dict[str, str]:
        """id -> "train"/"val"/"test" from RUN/split.csv; {} when absent."""
        if not self.split_path.is_file():
            return {}
        try:
            return read_split(self.split_path)
        except (KeyError, ValueError) as e:
            raise HistoscanInputError(f"{self.split_path}: not a split file ({e})") from None

    def write_split(self, ids: list[str], labels: np.ndarray, groups: list[str], split: np.ndarray) -> None:
        with atomic_path(self.split_path) as tmp:
            write_split(tmp, ids, labels, groups, split)

    def read_threshold(self) -> dict[str, Any] | None:
        """RUN/threshold.json with a float `threshold`, or None when absent; a malformed file is an input error."""
        info = self._read_json(self.threshold_path)
        if info is None:
            return None
        try:
            info["threshold"] = float(info["threshold"])
        except (KeyError, TypeError, ValueError) as e:
            raise HistoscanInputError(f"{self.threshold_path}: not a threshold file ({e})") from None
        return info

    def write_threshold(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.threshold_path, info)

    def read_calibration(self) -> dict[str, Any] | None:
        """RUN/calibration.json with a float `temperature` > 0, or None when absent (runs from before 2026-12-05:
        uncalibrated, T = 1); a malformed file is an input error."""
        info = self._read_json(self.calibration_path)
        if info is None:
            return None
        try:
            info["temperature"] = float(info["temperature"])
            if not info["temperature"] > 0:
                raise ValueError(f"temperature {info['temperature']} is not above 0")
        except (KeyError, TypeError, ValueError) as e:
            raise HistoscanInputError(f"{self.calibration_path}: not a calibration file ({e})") from None
        return info

    def write_calibration(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.calibration_path, info)

    def temperature(self) -> float:
        """The run's calibration temperature (1.0 when uncalibrated)."""
        info = self.read_calibration()
        return 1.0 if info is None else info["temperature"]

    def read_metrics(self) -> list[dict[str, str]]:
        """RUN/metrics.csv as rows (one per epoch, values as written, epochs 1-based); [] when absent."""
        return read_metrics_file(self.metrics_path)

    def metric_columns(self) -> dict[str, np.ndarray] | None:
        """RUN/metrics.csv as float columns (blank cells NaN) with 1-based epochs (an older run's 0-based file
        renumbered, a file without an epoch column numbered by row); None when absent or empty."""
        if not self.metrics_path.is_file():
            return None
        with self.metrics_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return None
        columns = {k: np.array([_number(r.get(k)) for r in rows]) for k in rows[0]}
        epoch = columns.get("epoch")
        columns["epoch"] = np.arange(1, len(rows) + 1) if epoch is None else epoch + epoch_offset(epoch[0])
        return columns

    def epochs_done(self) -> int:
        """Epochs recorded in RUN/metrics.csv (0 when there is none)."""
        return len(self.read_metrics())

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace RUN/metrics.csv by `rows` (atomically; no rows: no file)."""
        write_metrics_file(self.metrics_path, rows)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise HistoscanInputError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(info, dict):
            raise HistoscanInputError(f"{path}: expected a JSON object")
        return info


def _number(v: str | None) -> float:
    """A metrics.csv cell as a float; blank or unreadable: NaN."""
    try:
        return float(v) if v not in (None, "") else np.nan
    except ValueError:
        return np.nan


def epoch_offset(first_epoch: str | float | None) -> int:
    """What to add to a metrics.csv's epoch numbers to make them 1-based: 1 for a file written before epochs
    were numbered from 1 (its first row is epoch 0), else 0. Every file starts at its run's first epoch (a
    resume trims rows off the end only), so the first row tells the two apart."""
    try:
        return 1 if first_epoch not in (None, "") and float(first_epoch) == 0 else 0
    except ValueError:
        return 0


def read_metrics_file(path: Path) -> list[dict[str, str]]:
    """A metrics.csv as rows, epochs 1-based (an older 0-based file renumbered); [] when absent."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    shift = epoch_offset(rows[0].get("epoch")) if rows else 0
    if shift:
        rows = [{**r, "epoch": str(int(float(r["epoch"])) + shift)} for r in rows]
    return rows


def write_metrics_file(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Write metrics.csv rows atomically (never a half-written row); `columns`: default the first row's keys.
    No rows: the file is removed."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    fields = columns or list(rows[0])
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


SPLIT_COLUMNS = ["id", "label", "group", "split"]


def write_split(
    path: Path, ids: Sequence[str], labels: np.ndarray, groups: Sequence[str], split: np.ndarray
) -> None:
    """Write a split.csv (id,label,group,split)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SPLIT_COLUMNS)
        w.writerows(zip(ids, (int(v) for v in labels), groups, split, strict=True))


def read_split(path: Path) -> dict[str, str]:
    """id -> split from a split.csv."""
    with path.open(newline="") as f:
        return {row["id"]: row["split"] for row in csv.DictReader(f)}
