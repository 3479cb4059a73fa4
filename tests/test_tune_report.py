"""benchmarks/tune_report.py: the study table from a tune folder (order, repeats, counts, best, importance)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tune_report  # noqa: E402

from histoscan.folders.tune import TuneDir  # noqa: E402

COLUMNS = ["trial", "state", "mean_auc", "fold_auc", "seconds", "lr", "dropout"]


def _folder(tmp_path: Path, rows: list[list[str]]) -> TuneDir:
    folder = TuneDir(tmp_path / "tune")
    folder.path.mkdir()
    with folder.trials_csv.open("w", newline="") as f:
        csv.writer(f).writerows([COLUMNS, *rows])
    record = {"folds": 5, "use_folds": [0], "search_space": {"lr": ["log", [1e-5, 1e-2]], "dropout": ["float", [0, 1]]}}
    folder.record_path.write_text(json.dumps(record))
    (folder.path / TuneDir.IMPORTANCE_CSV).write_text("param,importance\nlr,0.7\ndropout,0.3\n")
    return folder


def test_trials_sorted_by_objective_with_repeats_and_counts(tmp_path: Path) -> None:
    folder = _folder(tmp_path, [
        ["0", "COMPLETE", "0.900000", "0.9", "120", "0.001", "0.1"],
        ["1", "COMPLETE", "0.930000", "0.93", "240", "0.0003", "0.5"],
        ["2", "FAIL", "", "", "", "0.01", "0.2"],
        ["3", "PRUNED", "0.850000", "", "", "0.001", "0.1"],
        ["4", "COMPLETE", "0.910000", "0.91", "60", "0.002", "0.3"],
    ])  # fmt: skip
    block, summary = tune_report.report(folder, "set", "set/tune-importance.png")
    assert summary == {"finished": 4, "distinct": 3, "failed": 1, "best": {"trial": 1, "mean_auc": 0.93},
                       "importance": {"lr": 0.7, "dropout": 0.3}}  # fmt: skip
    table = [line for line in block.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[0][2:] for line in table] == ["1", "4", "0", "3", "2"]
    assert "| 3 | pruned (→ 0) | 0.8500 | – | 0.001 | 0.1 |" in table
    assert "| 1 | complete | 0.9300 | 4.0 | 0.0003 | 0.5 |" in table
    assert "4 finished trials (3 complete, 1 pruned; 3 distinct parameter sets), 1 failed" in block
    assert "lr 0.70, dropout 0.30" in block and "![parameter importance](set/tune-importance.png)" in block


def test_a_folder_without_trials_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no trials.csv"):
        tune_report.report(TuneDir(tmp_path), "set", None)


def test_the_best_configuration_is_kept_beside_the_table_and_named_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path, [["0", "COMPLETE", "0.900000", "0.9", "120", "0.001", "0.1"]])
    folder.best_path.write_text("lr: 0.001\ndropout: 0.1\n")
    md = tmp_path / "results.md"
    md.write_text("<!-- BEGIN tune set -->\nstale table\n<!-- END tune set -->\n")
    monkeypatch.chdir(tmp_path)
    argv = ["tune_report.py", "--tune", str(folder.path), "--name", "set", "--markdown", str(md), "--keep", "kept"]
    monkeypatch.setattr(sys, "argv", argv)
    assert tune_report.main() == 0
    assert (tmp_path / "kept/set/tune-best.yaml").read_text() == "lr: 0.001\ndropout: 0.1\n"
    text = md.read_text()
    assert "its full configuration is `kept/set/tune-best.yaml`" in text and "stale table" not in text
