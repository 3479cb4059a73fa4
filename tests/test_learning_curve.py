"""benchmarks/learning_curve.py: the table's means, seeds and paired difference, and the plot, from results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import learning_curve  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402


def _result(seed: int, noise: float, rng: np.random.Generator) -> dict:
    def part(n: int) -> dict:
        y = rng.integers(0, 2, n)
        z = (2 * y - 1) + noise * rng.normal(size=n)
        return {"id": np.array([f"p{i}" for i in range(n)]), "label": y, "logit": z, "logit_tta8": z}

    rng_test = np.random.default_rng(0)  # one test set: every result scores the same patches
    y = rng_test.integers(0, 2, 300)
    z = (2 * y - 1) + noise * rng.normal(size=300)
    test = {"id": np.array([f"t{i}" for i in range(300)]), "label": y, "logit": z, "logit_tta8": z}
    decision = {"tta": 0, "calibrate": "temperature", "threshold_rule": "youden", "target_sensitivity": None}
    return {"setup": {"seed": seed}, "seconds": 60.0, "epochs_trained": 3, "test": test, "val": part(200),
            "decision": decision}  # fmt: skip


def test_table_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    results = {r: {n: [_result(s, noise, rng) for s in (42, 1, 2)] for n, noise in ((500, 2.0), (4500, 0.8))}
               for r in ("a", "b")}  # fmt: skip
    text = learning_curve.table("test-set", results, "python x")
    rows = [line for line in text.splitlines() if line.startswith("| 500 ") or line.startswith("| 4500 ")]
    assert len(rows) == 2
    want = np.mean([roc_auc_score(r["test"]["label"], r["test"]["logit"]) for r in results["a"][4500]])
    assert f"| 4500 | {want:.3f} (" in text and "a − b [paired 95 % CI]" in text
    assert "seeds 42, 1, 2" in text
    learning_curve.plot(results, tmp_path / "c.png", "test-set")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "train_labels.csv").write_text("id,label\na,0\n")
    with pytest.raises(SystemExit, match="unknown"):
        learning_curve.curve(type("A", (), {"train": str(tmp_path), "out": "o", "keep": "k", "name": "n",
                                           "recipes": "nope", "sizes": "1", "seeds": "1"})())  # fmt: skip


def test_kept_only_trains_nothing_and_the_table_marks_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "train_labels.csv").write_text("id,label\na,0\nb,1\n")
    args = argparse.Namespace(train=str(tmp_path), test="T", out=str(tmp_path / "o"), keep=str(tmp_path / "k"),
                              name="n", recipes="onecycle-30", sizes="2", seeds="42,1", kept_only=True)  # fmt: skip
    assert learning_curve.curve(args) == {"onecycle-30": {}}  # nothing kept, nothing trained
    assert "onecycle-30 at 2 patches: seed(s) 42, 1 not kept yet" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    rng = np.random.default_rng(3)
    results = {"a": {n: [_result(s, 1.0, rng) for s in (42, 1)] for n in (500, 4500)},
               "b": {4500: [_result(s, 1.0, rng) for s in (42, 1)]}}  # fmt: skip
    text = learning_curve.table("test-set", results, "python x")
    row500 = next(line for line in text.splitlines() if line.startswith("| 500 "))
    row4500 = next(line for line in text.splitlines() if line.startswith("| 4500 "))
    assert row500.endswith("| – (not run yet) | – |")
    assert row4500.count("[") == 1 and not row4500.endswith("| – |")
    learning_curve.plot(results, tmp_path / "c.png", "test-set")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
