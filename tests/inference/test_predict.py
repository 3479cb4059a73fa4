"""Prediction: backends, dihedral TTA (invariance, logit averaging, one forward), writers and CLI errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from run_fixtures import idc_store, make_run

from histoscan.cli import main
from histoscan.data.store import PatchStore, resolve_store
from histoscan.inference.predict import predict
from histoscan.inference.predictor import load_predictor
from histoscan.inference.tta import tta_logits
from histoscan.utils.dihedral import dihedral_views
from histoscan.utils.numeric import sigmoid


@pytest.fixture(scope="module")
def setup(idc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PatchStore]:
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("predict")
    store = idc_store(idc_root, tmp, patients=2, per_class=3)
    return make_run(tmp / "run", store=store, threshold=0.48), store


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_tta_is_invariant_to_every_dihedral_transform(setup) -> None:
    run, store = setup
    fn = load_predictor(run)
    x = torch.from_numpy(np.array(store.images[:2]))
    base8, base4 = sigmoid(tta_logits(fn, x.numpy(), 8)), sigmoid(tta_logits(fn, x.numpy(), 4))
    plain = sigmoid(tta_logits(fn, x.numpy(), 0))
    transformed = dihedral_views(x, 8, dims=(1, 2))
    for k, xt in enumerate(transformed):
        np.testing.assert_allclose(sigmoid(tta_logits(fn, xt.numpy(), 8)), base8, atol=1e-5)
        if k < 4:  # rotations only for --tta 4
            np.testing.assert_allclose(sigmoid(tta_logits(fn, xt.numpy(), 4)), base4, atol=1e-5)
    assert (
        np.abs(sigmoid(tta_logits(fn, transformed[5].numpy(), 0)) - plain).max() > 1e-6
    )  # the model alone is not


def test_tta_averages_logits_in_one_forward() -> None:
    calls = []

    def backend(batch: np.ndarray) -> np.ndarray:  # a "model" whose logit is the top-left pixel
        calls.append(batch.shape)
        return batch[:, 0, 0, 0].astype(np.float32)

    x = np.zeros((3, 4, 4, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 3, 0] = 8, 4  # two corners set: each view sees a corner value or 0
    out = tta_logits(backend, x, 8)
    assert calls == [(24, 4, 4, 3)]  # 8 views x 3 patches in one call
    # the top-left corner after each of the 8 symmetries: 8, 4, 0, 0 (rotations), 4, 0, 0, 8 (flipped)
    np.testing.assert_allclose(out, np.full(3, (8 + 4 + 4 + 8) / 8))
    assert tta_logits(backend, x, 0).tolist() == [8, 8, 8]


def test_predict_csv_on_kaggle_layout_matches_the_model(setup, shared_data: Path, tmp_path: Path) -> None:
    run, _ = setup
    data = shared_data / "kaggle-hcd-test"
    summary = predict(run, data, tmp_path / "p.csv", batch_size=5)
    rows = _read(tmp_path / "p.csv")
    assert list(rows[0]) == ["id", "probability", "label", "fitted"]
    assert [r["id"] for r in rows] == [r["id"] for r in _read(data / "sample_submission.csv")]
    assert summary["n"] == 18 and summary["threshold"] == 0.48
    assert [r["fitted"] for r in rows] == ["cropped 96x96 -> 50x50"] * 18 and summary["n_fitted"] == 18
    assert summary["fitted_note"].startswith("18 of 18 images had another size than the model's 50x50 px")
    # 96 px Kaggle tiles are re-fitted (centre-crop) to the 50 px model, then scored as load_model scores them
    store = resolve_store(data, image_size=50, fit="pad", part="unlabelled")
    want = load_predictor(run).predict_proba(np.array(store.images))
    got = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert [int(r["label"]) for r in rows] == [int(q >= 0.48) for q in got]


def test_predict_kaggle_format_follows_sample_submission(setup, shared_data: Path, tmp_path: Path) -> None:
    run, _ = setup
    data = shared_data / "kaggle-hcd-test"
    assert (
        main(
            [
                "predict",
                str(run),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "s.csv"),
                "--format",
                "kaggle",
                "--tta",
            ]
        )
        == 0
    )
    rows = _read(tmp_path / "s.csv")
    assert list(rows[0]) == ["id", "label"]
    assert [r["id"] for r in rows] == [r["id"] for r in _read(data / "sample_submission.csv")]
    assert all(0 < float(r["label"]) < 1 for r in rows)


def test_predict_unlabelled_folder(setup, idc_root: Path, tmp_path: Path) -> None:
    run, store = setup
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted((idc_root / "images").rglob("*.png"))[:3]
    for f in src:
        shutil.copy(f, folder / f.name)
    assert main(["predict", str(run), "--data", str(folder), "--out", str(tmp_path / "o.csv")]) == 0
    assert sorted(r["id"] for r in _read(tmp_path / "o.csv")) == sorted(f.stem for f in src)
    assert {r["fitted"] for r in _read(tmp_path / "o.csv")} == {""}  # all 50x50: nothing fitted


def test_predict_says_which_images_were_padded(setup, idc_root: Path, tmp_path: Path) -> None:
    run, _ = setup
    folder = tmp_path / "edge"
    folder.mkdir()
    for name in ("14078_idx5_x1001_y1501_class0.png", "12877_idx5_x1101_y1401_class0.png"):
        shutil.copy(idc_root / "images" / name.split("_")[0] / name, folder / name)
    shutil.copy(sorted((idc_root / "images" / "12877").glob("*.png"))[1], folder / "whole.png")
    summary = predict(run, folder, tmp_path / "o.csv")
    fitted = {r["id"]: r["fitted"] for r in _read(tmp_path / "o.csv")}
    assert fitted == {
        "14078_idx5_x1001_y1501_class0": "padded 50x42 -> 50x50",
        "12877_idx5_x1101_y1401_class0": "padded 50x11 -> 50x50",
        "whole": "",
    }
    assert summary["n_fitted"] == 2 and "(2 padded)" in summary["fitted_note"]


def _bad_model_run(tmp: Path, run: Path) -> Path:
    bad = tmp / "bad"
    shutil.copytree(run, bad)
    ckpt = torch.load(bad / "checkpoints" / "best.ckpt", weights_only=False)
    ckpt["hyper_parameters"]["config"]["model"] = "resnet18"
    torch.save(ckpt, bad / "checkpoints" / "best.ckpt")
    return bad


def test_cli_errors_exit_2(setup, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, store = setup
    out = str(tmp_path / "o.csv")
    (tmp_path / "empty").mkdir()
    other = resolve_store(
        store.path, image_size=64
    )  # a prepared STORE at another size than the model's 50 px
    cases = {
        "empty": ["predict", str(run), "--data", str(tmp_path / "empty"), "--out", out],
        "missing": ["predict", str(run), "--data", str(tmp_path / "nope"), "--out", out],
        "size": ["predict", str(run), "--data", str(other.path), "--out", out],
        "model": ["predict", str(_bad_model_run(tmp_path, run)), "--data", str(store.path), "--out", out],
        "onnx": ["predict", str(run), "--data", str(store.path), "--out", out, "--backend", "onnx"],
        "out-dir": ["predict", str(run), "--data", str(store.path), "--out", str(tmp_path)],
    }
    capsys.readouterr()
    for name, argv in cases.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("histoscan predict: error:"), (name, err)
    assert "64px" in _last_error(capsys, cases["size"]) and "50px" in _last_error(capsys, cases["size"])
    assert "resnet18" in _last_error(capsys, cases["model"])
    with pytest.raises(SystemExit) as e:
        main(["predict", str(run), "--data", str(store.path), "--out", out, "--tta", "3"])
    assert e.value.code == 2


def _last_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    main(argv)
    return capsys.readouterr().err
