"""benchmarks/external_decision.py (issue 18's default rule) and the timing and --extra @FILE of compare_external,
on synthetic kept results: each rule must be able to refuse a recipe on its own."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_external  # noqa: E402
import external_decision  # noqa: E402
import external_tables  # noqa: E402

from histoscan.config import TrainConfig  # noqa: E402

N = 600
DECISION = {"threshold_rule": "youden", "calibrate": "temperature", "tta": 0, "target_sensitivity": None}


def _part(signal: float, seed: int, prefix: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2
    logit = signal * (2 * y - 1) + rng.normal(size=N)
    return {"id": np.array([f"{prefix}{i}" for i in range(N)]), "label": y, "logit": logit, "logit_tta8": logit}


def _recipe(signal: float, seeds: int = 3, epoch_s: float = 30.0, epochs: int = 20) -> list[dict]:
    return [
        {
            "setup": {"seed": s},
            "test": _part(signal, 100 * s + int(signal * 10), "t"),
            "val": _part(signal, 100 * s + 7, "v"),
            "decision": DECISION,
            "seconds": 99_999.0,  # a wall clock swollen by pauses: the epochs time it
            "epochs_trained": epochs,
            "epoch_seconds": [60.0] + [epoch_s] * (epochs - 1),
        }
        for s in range(seeds)
    ]


def _keep_cv(folder: Path, name: str, config: TrainConfig, signal: float) -> None:
    """A kept 5-fold CV as compare_recipes.py writes it: NAME.json (setup.config) and NAME.csv (pooled rows)."""
    rng = np.random.default_rng(int(signal * 10))
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"setup": {"config": config.to_dict()}, "minutes": 1.0}))
    with (folder / f"{name}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "label", "probability", "fold", "decision"])
        for i in range(N):
            y = i % 2
            p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal())))
            w.writerow([f"c{i}", f"g{i % 40}", y, f"{p:.6f}", i % 5, int(p > 0.5)])


def test_each_rule_refuses_on_its_own_and_the_best_qualifier_wins(tmp_path: Path) -> None:
    cfgs = {
        "current": TrainConfig(epochs=8),
        "better": TrainConfig(epochs=30),
        "best-but-slow": TrainConfig(epochs=31),
        "screen": TrainConfig(epochs=32),
        "worse-on-cv": TrainConfig(epochs=33),
        "no-cv": TrainConfig(epochs=34),
    }
    results = {
        "current": _recipe(1.0),
        "better": _recipe(2.0),
        "best-but-slow": _recipe(3.0, epoch_s=120.0),  # 60 s + 19 x 120 s = 39 min > 30
        "screen": _recipe(3.0, seeds=1),
        "worse-on-cv": _recipe(3.0),
        "no-cv": _recipe(3.0),
    }
    cv = tmp_path / "idc"
    for name, signal in (("current", 1.0), ("better", 1.5), ("best-but-slow", 2.0), ("screen", 2.0),
                         ("worse-on-cv", 0.5)):  # fmt: skip
        _keep_cv(cv, name, cfgs[name], signal)
    d = external_decision.decide(results, {n: c.to_dict() for n, c in cfgs.items()}, cv, current="current")
    rows = d["rows"]
    assert rows["current"]["qualifies"] is None
    assert rows["better"]["qualifies"] and rows["better"]["test_diff"]["ci95"][0] > 0
    assert rows["better"]["minutes_max"] == pytest.approx((60 + 19 * 30) / 60)
    assert rows["best-but-slow"]["why"] == "train 39 min > 30"
    assert rows["screen"]["why"] == "1 seed(s) < 3"
    assert rows["worse-on-cv"]["why"] == "idc AUC below default's"
    assert rows["worse-on-cv"]["cv"]["diff"] < 0
    assert rows["no-cv"]["why"] == "no kept idc CV of no-cv's recipe"
    assert d["winner"] == "better"
    assert "**better** qualifies" in external_decision.decision_table("t", d, "idc")
    # the same recipe no better than the default on the test set: rule 1 alone refuses it
    results["better"] = _recipe(1.0)
    assert external_decision.decide(results, {n: c.to_dict() for n, c in cfgs.items()}, cv, "current")[
        "winner"
    ] is None


def test_a_kept_cv_is_found_by_its_recipe_not_its_name_or_where_it_ran(tmp_path: Path) -> None:
    _keep_cv(tmp_path, "default", TrainConfig(epochs=30, patience=8, data="idc", seed=42, folds=5), 1.0)
    found = external_decision.kept_cv(tmp_path, TrainConfig(epochs=30, patience=8, data="hcd", seed=1).to_dict())
    assert found is not None and found[0] == "default" and len(found[1]) == N
    assert external_decision.kept_cv(tmp_path, TrainConfig(epochs=30, patience=7).to_dict()) is None


def test_train_minutes_leave_pauses_out() -> None:
    paused = {"epochs_trained": 4, "seconds": 5000.0, "epoch_seconds": [50.0, 20.0, 3000.0, 22.0]}
    other = {"epochs_trained": 4, "seconds": 130.0, "epoch_seconds": [40.0, 24.0, 26.0, 25.0]}
    untimed = {"epochs_trained": 4, "seconds": 600.0}
    # fastest first epoch (40 s) + 3 x the median of the six later epochs (25.0 - 24.0 / 2 = 24.5 s)
    assert external_tables.train_minutes([paused, other, untimed]) == pytest.approx(
        [(40 + 3 * 24.5) / 60, (40 + 3 * 24.5) / 60, 10.0]
    )


def test_extra_recipe_from_a_saved_config_with_overrides(tmp_path: Path) -> None:
    best = tmp_path / "best.yaml"
    TrainConfig(data="hcd", out="runs/x", seed=5, epochs=17, lr=3e-4, schedule="cosine", dropout=0.3).save(best)
    fields = compare_external.extra_fields(f"@{best},epochs=12")
    assert (fields["epochs"], fields["lr"], fields["schedule"], fields["dropout"]) == (12, 3e-4, "cosine", 0.3)
    assert not {"data", "out", "seed", "folds", "fold", "test_fraction"} & set(fields)
    with pytest.raises(SystemExit, match="--extra @.*missing.yaml: cannot read it"):
        compare_external.extra_fields(f"@{tmp_path / 'missing.yaml'}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: -3\n")
    with pytest.raises(SystemExit, match="bad.yaml"):
        compare_external.extra_fields(f"@{bad}")


def test_the_table_pairs_every_recipe_with_each_baseline_present_and_only_those() -> None:
    """Each row's paired column against a baseline is that baseline's seed-mean AUC difference; a baseline's own
    cell, and the cells of a baseline not in the table, are blank."""
    results = {"pytorch-seed": _recipe(0.8), "onecycle-30": _recipe(1.4), "candidate": _recipe(2.0, seeds=1)}
    text = external_tables.table("t", results, None, "python x")
    header = next(line for line in text.splitlines() if line.startswith("| recipe"))
    assert "− onecycle-30 (default now) [paired 95 % CI]" in header
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    col = {b: header.split(" | ").index(h) for b, h in [
        ("pytorch-seed", "− pytorch-seed [paired 95 % CI]"),
        ("default-54db6fc", "− default-54db6fc [paired 95 % CI]"),
        ("onecycle-30", "− onecycle-30 (default now) [paired 95 % CI]"),
    ]}  # fmt: skip
    want = external_tables.seed_mean_auc_diff(results["candidate"], results["onecycle-30"], None)["diff"]
    assert want > 0.02
    assert cells["candidate"][col["onecycle-30"]].startswith(f"{want:+.3f} [")
    assert cells["onecycle-30"][col["onecycle-30"]] == "–"
    assert {cells[r][col["default-54db6fc"]] for r in results} == {"–"}  # not in the table
    assert cells["onecycle-30"][col["pytorch-seed"]].startswith("+")
