"""--device means the same for every model kind: torch devices and ONNX Runtime execution providers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from run_fixtures import make_run

import histoscan.utils.device as dev
from histoscan.errors import HistoscanInputError
from histoscan.export.onnx import export_onnx
from histoscan.inference.predict import predict
from histoscan.inference.predictor import load_predictor
from histoscan.utils.device import CPU_PROVIDER, CUDA_PROVIDER, onnx_providers, resolve_device

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ORT_HAS_CUDA = CUDA_PROVIDER in ort.get_available_providers()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, its model.onnx) of an untrained 32 px simple-cnn."""
    root = tmp_path_factory.mktemp("device")
    run = make_run(root / "run", image_size=32)
    return run, export_onnx(run, run / "model.onnx")


def test_onnx_providers_follow_the_device() -> None:
    with_cuda = ["CUDAExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cpu", with_cuda) == [CPU_PROVIDER]
    assert onnx_providers("auto", with_cuda) == [CUDA_PROVIDER, CPU_PROVIDER]
    assert onnx_providers("auto", cpu_only) == [CPU_PROVIDER]
    assert onnx_providers(None, cpu_only) == [CPU_PROVIDER]
    assert onnx_providers("cuda", with_cuda) == [CUDA_PROVIDER, CPU_PROVIDER]
    assert onnx_providers("cuda:1", with_cuda) == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]
    with pytest.raises(
        HistoscanInputError, match=r"^--device cuda: this onnxruntime has no CUDA .*onnxruntime-gpu"
    ):
        onnx_providers("cuda", cpu_only)
    with pytest.raises(HistoscanInputError, match=r"^--device gpu: choose auto, cpu or cuda"):
        onnx_providers("gpu", with_cuda)


def test_torch_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "cuda_count", lambda: 0)
    assert (
        resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device("cpu") == "cpu"
    )
    with pytest.raises(HistoscanInputError, match=r"^--device cuda: no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(HistoscanInputError, match=r"^--device tpu: choose auto, cpu or cuda"):
        resolve_device("tpu")
    monkeypatch.setattr(dev, "cuda_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(HistoscanInputError, match=r"^--device cuda:2: only 2 GPU\(s\) visible"):
        resolve_device("cuda:2")


def test_onnx_predictor_on_the_cpu_when_asked(exported) -> None:
    run, onnx = exported
    for model, backend in ((onnx, "auto"), (run, "onnx")):
        p = load_predictor(model, backend, device="cpu")
        assert p.card.backend == "onnx" and p.device == "cpu"
        assert p.session.get_providers() == [CPU_PROVIDER]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    torch_logits = load_predictor(run, device="cpu").predict_logits(images)
    np.testing.assert_allclose(load_predictor(onnx, device="cpu")(images), torch_logits, atol=1e-4)


@pytest.mark.skipif(ORT_HAS_CUDA, reason="this onnxruntime has a CUDA provider")
def test_cuda_asked_without_a_gpu_is_one_clear_error_for_both_kinds(exported, monkeypatch, tmp_path) -> None:
    run, onnx = exported
    with pytest.raises(HistoscanInputError, match=r"^--device cuda: this onnxruntime has no CUDA"):
        load_predictor(onnx, device="cuda")
    monkeypatch.setattr(dev, "cuda_count", lambda: 0)
    with pytest.raises(HistoscanInputError, match=r"^--device cuda: no CUDA GPU is visible"):
        load_predictor(run, device="cuda")
    assert load_predictor(onnx, device="auto").device == "cpu"  # auto: the CPU where no GPU can be used


def test_stage_entries_pass_the_device_on(exported, tmp_path: Path) -> None:
    """predict() (and evaluate(), which shares the loader call) hand `device` to load_predictor."""
    from PIL import Image

    _, onnx = exported
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    summary = predict(onnx, folder, tmp_path / "p.csv", device="cpu")
    assert summary["n"] == 2
    if not ORT_HAS_CUDA:
        with pytest.raises(HistoscanInputError, match=r"^--device cuda"):
            predict(onnx, folder, tmp_path / "q.csv", device="cuda")
        assert not (tmp_path / "q.csv").exists()


def test_an_onnx_model_cannot_be_explained_said_once(exported, tmp_path: Path) -> None:
    """explain, slide --explain and serve share Predictor.require_explainable: one exception, one message."""
    from histoscan.explain.gradcam import explain_files
    from histoscan.inference.base import ExplainUnavailable

    run, onnx = exported
    load_predictor(run, device="cpu").require_explainable()  # a PyTorch model: no error
    predictor = load_predictor(onnx, device="cpu")
    with pytest.raises(
        ExplainUnavailable,
        match=rf"^{re.escape(str(onnx))}: Grad-CAM needs the PyTorch model .*not an ONNX export$",
    ):
        predictor.require_explainable()
    with pytest.raises(
        ExplainUnavailable, match=r"^model.onnx: Grad-CAM needs"
    ):  # the server names the file only
        predictor.require_explainable("model.onnx")
    image = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    with pytest.raises(HistoscanInputError, match="not an ONNX export$"):
        explain_files(onnx, [image], tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
