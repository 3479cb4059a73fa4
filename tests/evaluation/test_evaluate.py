"""Evaluation: held-out subset, the run's threshold, written files, validation re-thresholding, errors."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from run_fixtures import idc_manifest, idc_store, make_run, split_rows

from histoscan.cli import main
from histoscan.data.store import PatchStore, prepare
from histoscan.evaluation.evaluate import evaluate
from histoscan.inference.predictor import load_predictor
from histoscan.scoring.metrics import choose_run_threshold, compute_metrics

KEYS = {
    "n",
    "n_positive",
    "auc",
    "pr_auc",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "brier",
    "ece",
    "threshold",
    "ci95",
}


@pytest.fixture(scope="module")
def setup(idc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PatchStore]:
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("evaluate")
    store = idc_store(idc_root, tmp, patients=6, per_class=2)  # 6 patients: 2 test, 2 val, 2 train
    return make_run(tmp / "run", store=store, threshold=0.49), store


@pytest.fixture(scope="module")
def evaluated(setup) -> tuple[dict, Path]:
    run, store = setup
    m = evaluate(run, store.path, n_boot=200)
    return m, Path(m["out"])


def _predictions(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_training_store_scores_only_the_test_split(setup, evaluated) -> None:
    run, store = setup
    m, out = evaluated
    test_ids = split_rows(run, "test")
    assert m["subset"] == "test split of training data"
    assert m["n"] == len(test_ids) == 8
    assert sorted(r["id"] for r in _predictions(out)) == sorted(test_ids)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["subset"] == "test split of training data" and KEYS <= set(saved)
    assert "test split of training data" in (out / "report.html").read_text()
    assert out == run / "eval-store"


def test_metrics_are_those_of_the_written_predictions_at_the_run_threshold(setup, evaluated) -> None:
    run, store = setup
    m, out = evaluated
    rows = _predictions(out)
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    assert m["threshold"] == 0.49 and "validation split" in m["threshold_source"]
    want = compute_metrics(y, p, 0.49, [r["group"] for r in rows], n_boot=200)
    for k in ("auc", "accuracy", "balanced_accuracy", "f1", "brier", "ece"):
        assert m[k] == pytest.approx(want[k], abs=1e-5), k
    assert m["ci95"]["auc"] == pytest.approx(want["ci95"]["auc"], abs=1e-4)
    assert m["bootstrap"]["unit"] == "group" and m["n_groups"] == 2
    # probabilities are the model's on the stored patches
    idx = [store.ids.index(r["id"]) for r in rows]
    np.testing.assert_allclose(p, load_predictor(run).predict_proba(np.array(store.images[idx])), atol=2e-6)


def test_report_and_figures_are_written_self_contained(evaluated) -> None:
    _, out = evaluated
    for name in (
        "metrics.json",
        "predictions.csv",
        "roc.png",
        "pr.png",
        "confusion.png",
        "calibration.png",
        "curves.png",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for text in (
        "ROC AUC",
        "95% CI",
        "False positives",
        "False negatives",
        "model: simple-cnn",
        "tumour (1)",
        "2 groups",
    ):
        assert text in html, text


def test_other_data_is_scored_in_full_with_default_threshold(setup, idc_root: Path, tmp_path: Path) -> None:
    run, store = setup
    bare = make_run(run.parent / "nothr" / "run", threshold=None)  # no threshold.json, no data.json
    manifest = idc_manifest(idc_root, tmp_path / "m.csv", patients=2, per_class=2)  # raw source, not a store
    m = evaluate(bare, manifest, out=tmp_path / "ev", n_boot=50)
    assert m["subset"] == "all" and m["n"] == 8 and m["threshold"] == 0.5
    assert any("no threshold.json" in n for n in m["notes"])
    assert "no threshold.json" in (tmp_path / "ev" / "report.html").read_text()


def test_target_sensitivity_rechooses_threshold_on_validation_split(setup, tmp_path: Path) -> None:
    run, store = setup
    m = evaluate(run, store.path, out=tmp_path / "ts", target_sensitivity=0.75, n_boot=20)
    val = np.array([store.ids.index(i) for i in split_rows(run, "val")])
    p_val = load_predictor(run).predict_proba(np.array(store.images[np.sort(val)]))
    want = choose_run_threshold(store.labels[np.sort(val)], p_val, 0.75)["threshold"]
    assert m["threshold"] == pytest.approx(want, abs=1e-6)
    assert "validation split at target sensitivity 0.75" in m["threshold_source"]


def test_cli_evaluate_with_tta(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, store = setup
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--data",
                str(store.path),
                "--out",
                str(tmp_path / "e"),
                "--tta",
                "4",
                "--n-boot",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "AUC" in out and "subset: test split of training data" in out
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["tta"] == 4


def test_cli_errors_exit_2(setup, idc_root: Path, shared_data: Path, tmp_path: Path, capsys) -> None:
    run, store = setup
    (tmp_path / "empty").mkdir()
    r2 = make_run(tmp_path / "notest", store=store, test_fraction=0.0)  # own data, no held-out test rows
    with (r2 / "split.csv").open() as f:
        text = f.read().replace(",test", ",train")
    (r2 / "split.csv").write_text(text)
    other = prepare(idc_manifest(idc_root, tmp_path / "m.csv", 1, 2), tmp_path / "s64", image_size=64)
    cases = {
        "unlabelled": [str(run), "--data", str(shared_data / "kaggle-hcd-test")],
        "empty": [str(run), "--data", str(tmp_path / "empty")],
        "size": [str(run), "--data", str(other.path)],
        "no-test": [str(r2), "--data", str(store.path)],
        "onnx": [str(run), "--data", str(store.path), "--backend", "onnx"],
    }
    capsys.readouterr()
    for name, argv in cases.items():
        assert main(["evaluate", *argv, "--out", str(tmp_path / "o")]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("histoscan evaluate: error:"), (name, err)
        if name == "no-test":
            assert "no test rows" in err[0]
        if name == "unlabelled":
            assert "label" in err[0]


def test_images_of_another_size_are_reported_per_patch(setup, idc_root: Path, tmp_path: Path) -> None:
    """Edge patches smaller than 50x50 are padded: predictions.csv says so per patch, the notes count them."""
    run, _ = setup
    edge = {
        "14078_idx5_x1001_y1501_class0": "padded 50x42 -> 50x50",
        "12877_idx5_x1101_y1401_class0": "padded 50x11 -> 50x50",
    }
    whole = [p for p in sorted((idc_root / "images" / "12877").glob("*.png")) if p.stem not in edge][:4]
    lines = ["path,label,patient"]
    lines += [f"{idc_root / 'images' / i.split('_')[0] / i}.png,0,{i.split('_')[0]}" for i in edge]
    lines += [f"{p},{k % 2},12877" for k, p in enumerate(whole)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    m = evaluate(run, tmp_path / "m.csv", out=tmp_path / "ev", n_boot=0)
    fitted = {r["id"]: r["fitted"] for r in _predictions(tmp_path / "ev")}
    assert fitted == {**edge, **{p.stem: "" for p in whole}} and m["n_fitted"] == 2
    note = "2 of 6 images had another size than the model's 50x50 px and were fitted to it (2 padded)"
    assert any(n.startswith(note) for n in m["notes"])
    assert note in html.unescape((tmp_path / "ev" / "report.html").read_text())  # "model's": &#39; (jinja2)
