"""benchmarks/compare_recipes.py: recipe specs and the reuse of kept predictions (full runs serve screens)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_recipes.py"
sys.path.insert(0, str(_PATH.parent))  # as when run as a script: its siblings (_common) import
_spec = importlib.util.spec_from_file_location("compare_recipes", _PATH)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def test_extra_fields_keep_list_values_together():
    assert compare.parse_fields("augment=d4,hed,precise_bn=20") == {"augment": "d4,hed", "precise_bn": "20"}
    assert compare.parse_fields("lr=1e-3,schedule=onecycle") == {"lr": "1e-3", "schedule": "onecycle"}
    with pytest.raises(SystemExit, match="'d4' is not field=value"):
        compare.parse_fields("d4,lr=1")


def _write(keep: Path, name: str, setup: dict, folds: list[int]) -> None:
    rows = [{"id": f"p{f}-{i}", "group": "", "label": str(i % 2), "probability": "0.5", "fold": str(f),
             "decision": "0"} for f in folds for i in range(3)]  # fmt: skip
    compare._keep(keep, name, setup, rows, minutes=10.0)


def test_kept_full_run_serves_a_screen_of_its_folds_but_not_the_reverse(tmp_path: Path):
    base = {"recipe": {}, "folds": 5, "epochs": 8, "patience": 3, "tta": 8, "seed": 42}
    _write(tmp_path, "seed", base, [0, 1, 2, 3, 4])
    rows, minutes = compare._kept(tmp_path, "seed", {**base, "use_folds": [0, 2]})
    assert (
        sorted({r["fold"] for r in rows}) == ["0", "2"] and len(rows) == 6 and minutes == pytest.approx(4.0)
    )
    assert len(compare._kept(tmp_path, "seed", base)[0]) == 15
    assert compare._kept(tmp_path, "seed", {**base, "epochs": 9, "use_folds": [0]}) is None  # other settings
    _write(tmp_path, "screen", {**base, "use_folds": [0]}, [0])
    assert compare._kept(tmp_path, "screen", base) is None  # a screen never stands in for the full run
    assert len(compare._kept(tmp_path, "screen", {**base, "use_folds": [0]})[0]) == 3
    saved = json.loads((tmp_path / "screen.json").read_text())
    assert saved["setup"]["use_folds"] == [0]
    with (tmp_path / "screen.csv").open() as f:
        assert list(csv.DictReader(f))[0]["fold"] == "0"


def test_replace_block_replaces_only_its_own_block(tmp_path: Path):
    from _common import replace_block

    doc = tmp_path / "results.md"
    doc.write_text("# Results\nprose\n")
    replace_block(doc, "compare a", "table A1")
    replace_block(doc, "compare a screen", "screen A")
    replace_block(doc, "compare a", "table A2")
    text = doc.read_text()
    assert text.startswith("# Results\nprose\n")
    assert "table A1" not in text and text.count("table A2") == 1 and text.count("screen A") == 1
    assert text.index("<!-- BEGIN compare a -->") < text.index("table A2") < text.index("<!-- END compare a -->")
