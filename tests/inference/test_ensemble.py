"""A `histoscan cv` folder as one model: mean logits, median threshold, one card, refused on its own data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from run_fixtures import idc_store
from tolerance import f32_tol

from histoscan.cli import main
from histoscan.config import TrainConfig
from histoscan.cv.crossval import crossval
from histoscan.errors import HistoscanInputError
from histoscan.evaluation.evaluate import evaluate
from histoscan.inference.ensemble import EnsemblePredictor
from histoscan.inference.predictor import load_predictor
from histoscan.inference.tta import tta_logits


@pytest.fixture(scope="module")
def cv(idc_root: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ensemble")
    store = idc_store(idc_root, tmp, patients=9, per_class=3)
    cfg = TrainConfig(data=str(store.path), out=str(tmp / "cv"), epochs=1, batch_size=8, limit_batches=2)
    crossval(cfg, folds=3)
    return tmp / "cv", store


def test_cv_folder_loads_as_one_model(cv) -> None:
    folder, store = cv
    model = load_predictor(folder, device="cpu")
    assert isinstance(model, EnsemblePredictor) and len(model.members) == 3
    members = [load_predictor(folder / f"fold-{k}", device="cpu") for k in range(3)]
    x = np.asarray(store.images[:6])
    want = np.mean([m.predict_logits(x) for m in members], axis=0)
    np.testing.assert_allclose(model.predict_logits(x), want, rtol=0, atol=f32_tol(want))
    thresholds = [m.card.threshold for m in members]
    assert model.card.threshold == pytest.approx(float(np.median(thresholds)))
    assert (
        model.card.model == "ensemble of 3 x simple-cnn"
        and "median of the 3 members" in model.card.threshold_source
    )
    assert (model.card.image_size, model.card.fit) == (members[0].card.image_size, members[0].card.fit)
    np.testing.assert_allclose(  # TTA works on the ensemble like on any predictor
        tta_logits(model, x, 8), np.mean([tta_logits(m, x, 8) for m in members], axis=0), rtol=0, atol=f32_tol(want)
    )


def test_ensemble_is_not_scored_on_its_own_training_data(cv) -> None:
    folder, store = cv
    with pytest.raises(HistoscanInputError, match="hold out no common test rows"):
        evaluate(folder, store.path)


def test_predict_with_a_cv_folder(cv, tmp_path: Path) -> None:
    folder, store = cv
    out = tmp_path / "p.csv"
    assert main(["predict", str(folder), "--data", str(store.path), "--out", str(out)]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(store) and all(0 <= float(r["probability"]) <= 1 for r in rows)
