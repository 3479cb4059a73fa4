"""Grouped k-fold cross-validation: every patch scored once, by the run that never saw its patient."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from tolerance import prob_tol

from histoscan.config import TrainConfig
from histoscan.cv.crossval import crossval


@pytest.fixture(scope="module")
def small_idc(idc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of real idc-breast patches: 18 patients with both classes, 8 patches each."""
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    with (idc_root / "labels.csv").open() as f:
        for r in csv.DictReader(f):
            by_patient[r["patient"]].append(r)
    rows = []
    for rs in by_patient.values():
        if {r["label"] for r in rs} == {"0", "1"} and len(rs) >= 8:
            rows += sorted(rs, key=lambda r: r["label"])[-4:] + sorted(rs, key=lambda r: r["label"])[:4]
        if len(rows) >= 18 * 8:
            break
    out = tmp_path_factory.mktemp("small-idc") / "manifest.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerows([str(idc_root / r["path"]), r["label"], r["patient"]] for r in rows)
    return out


def test_three_fold_cv_scores_every_patch_once_by_a_run_without_its_patient(small_idc: Path, tmp_path: Path):
    cfg = TrainConfig(data=str(small_idc), out=str(tmp_path / "cv"), epochs=1, batch_size=16, limit_batches=2)
    said: list[str] = []
    result = crossval(cfg, folds=3, echo=said.append)
    starts = [line for line in said if line.startswith("fold ") and ": training " in line]
    results = [line for line in said if line.startswith("fold ") and ": AUC " in line]
    assert [line.split(":")[0] for line in starts] == ["fold 1/3", "fold 2/3", "fold 3/3"]
    assert [line.split(":")[0] for line in results] == ["fold 1/3", "fold 2/3", "fold 3/3"]
    for line, fold in zip(results, result["per_fold"], strict=True):
        assert f"AUC {fold['auc']:.3f}" in line and f"({fold['n']} patches" in line
    with (tmp_path / "cv" / "predictions.csv").open() as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 144 and len({p["id"] for p in preds}) == 144
    # each patch's fitting note is carried from its fold's evaluation (the same column as evaluate's predictions)
    for k in range(3):
        (ev,) = (tmp_path / "cv" / f"fold-{k}").glob("eval-*/predictions.csv")
        with ev.open() as f:
            fitted = {r["id"]: r["fitted"] for r in csv.DictReader(f)}
        assert {p["id"]: p["fitted"] for p in preds if p["fold"] == str(k)} == fitted
    for k in range(3):
        run = tmp_path / "cv" / f"fold-{k}"
        with (run / "split.csv").open() as f:
            split = list(csv.DictReader(f))
        train_patients = {r["group"] for r in split if r["split"] in ("train", "val")}
        test_patients = {r["group"] for r in split if r["split"] == "test"}
        assert not train_patients & test_patients
        scored = {p["group"] for p in preds if p["fold"] == str(k)}
        assert scored == test_patients
        threshold = json.loads((run / "threshold.json").read_text())["threshold"]
        for p in preds:
            if p["fold"] == str(k):
                assert p["decision"] == str(int(float(p["probability"]) >= threshold))
    pooled = result["pooled"]
    assert pooled["n"] == 144 and pooled["n_positive"] == sum(p["label"] == "1" for p in preds) > 30
    for key in ("auc", "balanced_accuracy", "f1"):
        lo, hi = pooled["ci95"][key]
        assert lo <= pooled[key] <= hi
    assert len(result["per_fold"]) == 3
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["pooled"]["n"] == 144


def test_cv_refuses_to_overwrite(small_idc: Path, tmp_path: Path):
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "x").write_text("keep")
    from histoscan.errors import HistoscanInputError

    with pytest.raises(HistoscanInputError, match="--force"):
        crossval(TrainConfig(data=str(small_idc), out=str(tmp_path / "cv")), folds=3)


def test_cv_resume_keeps_finished_folds(small_idc: Path, tmp_path: Path):
    import shutil

    cfg = TrainConfig(data=str(small_idc), out=str(tmp_path / "cv"), epochs=1, batch_size=16, limit_batches=2)
    first = crossval(cfg, folds=3)
    kept = {
        k: (tmp_path / "cv" / f"fold-{k}" / "checkpoints" / "best.ckpt").stat().st_mtime_ns for k in (0, 1)
    }
    for d in (tmp_path / "cv" / "fold-2").glob("eval-*"):
        shutil.rmtree(d)  # fold 2 stopped before its evaluation
    said: list[str] = []
    again = crossval(cfg, folds=3, echo=said.append, resume=True)
    assert [line for line in said if "done before, kept" in line] == [
        f"fold 1/3: done before, kept ({tmp_path / 'cv' / 'fold-0'})",
        f"fold 2/3: done before, kept ({tmp_path / 'cv' / 'fold-1'})",
    ]
    assert any(line.startswith("fold 3/3: training") for line in said)
    for k, mtime in kept.items():
        assert (tmp_path / "cv" / f"fold-{k}" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == mtime
    assert again["pooled"]["n"] == first["pooled"]["n"] == 144
    changed = dataclasses.replace(cfg, lr=cfg.lr / 2)  # another configuration: nothing is kept
    said.clear()
    crossval(changed, folds=3, echo=said.append, resume=True)
    assert not [line for line in said if "kept" in line]


def test_cv_use_folds_runs_only_those_folds_of_the_same_split(small_idc: Path, tmp_path: Path):
    cfg = TrainConfig(
        data=str(small_idc), out=str(tmp_path / "all"), epochs=1, batch_size=16, limit_batches=2
    )
    full = crossval(cfg, folds=3)
    screen = crossval(dataclasses.replace(cfg, out=str(tmp_path / "one")), folds=3, use_folds=[1])
    assert screen["use_folds"] == [1] and full["use_folds"] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "one").glob("fold-*")) == ["fold-1"]
    with (tmp_path / "all" / "predictions.csv").open() as f:
        fold1 = {r["id"]: r for r in csv.DictReader(f) if r["fold"] == "1"}
    with (tmp_path / "one" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == set(fold1)  # the same held-out patients as fold 1 of the full split
    assert screen["pooled"]["n"] == len(fold1) < full["pooled"]["n"]
    for r in rows:  # same seed, same fold, same data: the same run, so the same scores
        p = float(fold1[r["id"]]["probability"])  # two trainings: many more float32 steps than one forward
        logit = np.log(max(p, 1e-7) / max(1 - p, 1e-7))
        assert float(r["probability"]) == pytest.approx(p, abs=5e-7 + prob_tol(logit, terms=2**14))
    from histoscan.errors import HistoscanInputError

    with pytest.raises(HistoscanInputError, match=r"--use-folds \[3\]: need fold numbers in 0..2"):
        crossval(dataclasses.replace(cfg, out=str(tmp_path / "bad")), folds=3, use_folds=[3])
