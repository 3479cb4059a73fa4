"""ONNX export: parity with PyTorch, dynamic batch, uint8 input, metadata, the backend and failure paths."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from run_fixtures import make_run
from tolerance import f32_tol, prob_tol

from histoscan import __version__
from histoscan.cli import main
from histoscan.config import TrainConfig
from histoscan.errors import HistoscanInputError
from histoscan.export import onnx as export
from histoscan.export.onnx import ParityError, export_onnx, read_metadata
from histoscan.inference.onnx import OnnxPredictor
from histoscan.inference.predictor import load_predictor

SIZE = 32


def make_export_run(root: Path, model: str) -> Path:
    """A run folder with random (seeded) weights and BatchNorm statistics (so the graph must carry them)."""
    training_data = {"store": "/cache/stores/abc", "checksum": "sha256:1234", "n": 7889}
    return make_run(
        root, model, SIZE, 0.37, mpp=0.972, bn_stats=True, data="/data/idc-breast", data_json=training_data
    )


def idc_patches(idc_root: Path, n: int, size: int = SIZE) -> np.ndarray:
    """`n` real idc-breast patches (both classes) fitted to `size`."""
    from histoscan.data.images import decode_image, fit_image

    with open(idc_root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[:: max(1, len(rows) // n)][:n]
    return np.stack([fit_image(decode_image(idc_root / r["path"], r["path"])[0], size, "pad") for r in rows])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {m: make_export_run(root / m, m) for m in ("simple-cnn", "resnet18")}


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {m: export_onnx(run, out / f"{m}.onnx") for m, run in runs.items()}


@pytest.mark.parametrize("model", ["simple-cnn", "resnet18"])
def test_parity_on_real_patches_with_dynamic_batch(
    model: str, runs: dict[str, Path], exported: dict[str, Path], idc_root: Path
) -> None:
    images = idc_patches(idc_root, 5)
    ref = load_predictor(runs[model]).predict_logits(images)
    backend = OnnxPredictor(exported[model], threads=2)
    five = backend(images)
    ones = np.concatenate([backend(images[i : i + 1]) for i in range(5)])
    assert five.shape == (5,) and five.dtype == np.float32
    assert np.abs(five - ref).max() <= f32_tol(ref)
    assert np.abs(ones - ref).max() <= f32_tol(ref)
    assert np.ptp(ref) > 1e-3  # the images are told apart, so the comparison means something


def test_graph_takes_uint8_nhwc_and_returns_logits_and_probabilities(exported: dict[str, Path]) -> None:
    session = OnnxPredictor(exported["simple-cnn"], threads=1).session
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type) == ("images", "tensor(uint8)")
    assert inp.shape[1:] == [SIZE, SIZE, 3] and not isinstance(inp.shape[0], int)
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    x = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    logits, probs = session.run(None, {"images": x})
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=0, atol=prob_tol(logits, terms=4))


def test_metadata_is_present_and_correct(exported: dict[str, Path]) -> None:
    meta = read_metadata(exported["resnet18"])
    assert meta["model"] == "resnet18"
    assert meta["image_size"] == str(SIZE) and float(meta["mpp"]) == 0.972
    assert float(meta["threshold"]) == 0.37
    assert meta["histoscan_version"] == __version__ and meta["fit"] == "pad"
    data = json.loads(meta["training_data"])
    assert data == {
        "data": "/data/idc-breast",
        "store": "/cache/stores/abc",
        "checksum": "sha256:1234",
        "n": 7889,
    }
    assert TrainConfig.from_dict(json.loads(meta["config"])).model == "resnet18"
    assert float(meta["parity_max_abs_logit_diff"]) <= 1e-4 and "parity_images" in meta
    assert meta["opset"] == "17" and datetime.fromisoformat(meta["created"]).tzinfo is not None
    card = OnnxPredictor(exported["resnet18"], threads=1).card
    assert (card.image_size, card.mpp, card.threshold, card.model, card.backend) == (
        SIZE,
        0.972,
        0.37,
        "resnet18",
        "onnx",
    )
    assert meta["threshold_source"] == card.threshold_source and card.threshold_source.startswith(
        "threshold.json"
    )


def test_load_onnx_model_matches_torch_model(runs: dict[str, Path], exported: dict[str, Path]) -> None:
    onnx_model = OnnxPredictor(exported["simple-cnn"], threads=1)
    torch_model = load_predictor(runs["simple-cnn"])
    x = np.random.default_rng(4).integers(0, 256, (7, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        onnx_model.predict_proba(x, batch_size=3),
        torch_model.predict_proba(x),
        rtol=0,
        atol=prob_tol(torch_model.predict_logits(x)),
    )
    card = onnx_model.card
    assert (card.image_size, card.mpp, card.threshold) == (SIZE, 0.972, 0.37)
    assert card.model == "simple-cnn" and card.config.fit == "pad" and card.fit == "pad"


def test_backend_rejects_float_and_wrong_size(exported: dict[str, Path]) -> None:
    backend = OnnxPredictor(exported["simple-cnn"], threads=1)
    with pytest.raises(HistoscanInputError, match="uint8 N x 32 x 32 x 3"):
        backend(np.zeros((1, SIZE, SIZE, 3), np.float32))
    with pytest.raises(HistoscanInputError, match="uint8 N x 32 x 32 x 3"):
        backend(np.zeros((1, 50, 50, 3), np.uint8))


def test_parity_failure_raises_and_leaves_no_file(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_call = OnnxPredictor.__call__
    monkeypatch.setattr(OnnxPredictor, "__call__", lambda self, x: real_call(self, x) + 1e-3)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match=r"differs from PyTorch by 0\.001"):
        export_onnx(runs["simple-cnn"], out)
    assert list(tmp_path.iterdir()) == []


def test_bad_run_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(HistoscanInputError, match="no such run folder"):
        export_onnx(tmp_path / "missing", tmp_path / "m.onnx")
    with pytest.raises(HistoscanInputError, match="ONNX model not found"):
        OnnxPredictor(tmp_path / "m.onnx")


def test_cli_prints_parity(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.onnx"
    # opset 21 is above the TorchScript exporter's ceiling: this is the torch.export-based path
    assert main(["export", str(runs["simple-cnn"]), "--out", str(out), "--opset", "21"]) == 0
    printed = capsys.readouterr().out
    assert "parity: max |Δlogit| = " in printed and out.is_file()
    assert read_metadata(out)["opset"] == "21"
    assert main(["export", str(runs["simple-cnn"]), "--out", str(out), "--opset", "99"]) == 2
    assert "--opset 99: choose 11.." in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(out)]) == 2


def make_stain_run(root: Path, idc_root: Path, method: str = "macenko") -> Path:
    """A simple-cnn run at 50 px whose classifier carries a stain normaliser fitted on real patches."""
    from histoscan.stain.normalise import fit_stain

    stain = fit_stain(idc_patches(idc_root, 8, 50), method)
    return make_run(root, image_size=50, mpp=4.0, threshold=None, stain=stain)


def test_stain_normalisation_is_exported_in_the_graph(idc_root: Path, tmp_path: Path) -> None:
    run = make_stain_run(tmp_path / "run", idc_root)
    blank = np.stack([np.full((50, 50, 3), 255, np.uint8), np.zeros((50, 50, 3), np.uint8)])  # pass-through
    images = np.concatenate([idc_patches(idc_root, 12, 50), blank])
    path = export_onnx(run, tmp_path / "stain.onnx", check_images=images)
    assert read_metadata(path)["stain"] == "macenko"
    ref = load_predictor(run).predict_logits(images)
    assert np.abs(OnnxPredictor(path, threads=1)(images) - ref).max() <= f32_tol(ref, terms=2**14)  # + the filter
    # the normaliser is really in the graph: the same net without it gives other logits
    plain = load_predictor(run).classifier
    plain.stain = None
    with torch.inference_mode():
        assert np.abs(plain(torch.from_numpy(images)).numpy() - ref).max() > 1e-3


def test_stain_that_does_not_export_is_refused(
    idc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_stain_run(tmp_path / "run", idc_root, "reinhard")

    def fail(*_args: object) -> None:
        raise RuntimeError("Unsupported: aten::nanquantile")

    monkeypatch.setattr(export, "_torch_onnx_export", fail)
    with pytest.raises(
        HistoscanInputError, match=r"stain normaliser \(reinhard\) cannot be exported.*nanquantile"
    ):
        export_onnx(run, tmp_path / "m.onnx")
    assert list(tmp_path.glob("*.onnx")) == [] and list(tmp_path.glob(".*partial")) == []
