"""Fixtures for the server tests: a tiny simple-cnn run folder and a test client over it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from histoscan.config import TrainConfig
from histoscan.inference import PatchClassifier
from histoscan.models import create_model


def _make_run(root: Path, image_size: int = 96, threshold: float = 0.5, seed: int = 0) -> Path:
    """A run folder with an untrained simple-cnn checkpoint, as training writes it."""
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(model="simple-cnn", image_size=image_size, mpp=0.972)
    cfg.save(root / "config.yaml")
    net = PatchClassifier(create_model("simple-cnn"))
    with torch.no_grad():  # non-trivial BN statistics so outputs vary between images
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    (root / "checkpoints").mkdir(exist_ok=True)
    torch.save(
        {
            "hyper_parameters": {"config": cfg.to_dict(), "image_size": image_size, "mpp": 0.972},
            "state_dict": {"classifier." + k: v for k, v in net.state_dict().items()},
        },
        root / "checkpoints" / "best.ckpt",
    )
    (root / "threshold.json").write_text(json.dumps({"threshold": threshold, "method": "youden"}))
    return root


@pytest.fixture(scope="session")
def make_run() -> Callable[..., Path]:
    """`make_run(root, image_size=96, threshold=0.5, seed=0) -> root`: writes a tiny simple-cnn run folder."""
    return _make_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simple-cnn run folder (96 px, threshold 0.5)."""
    torch.set_num_threads(2)
    return _make_run(tmp_path_factory.mktemp("serve") / "tiny-run")


@pytest.fixture(scope="session")
def hcd_files(shared_data: Path) -> list[Path]:
    """Real 96x96 Kaggle HCD test patches (TIFF)."""
    files = sorted((shared_data / "kaggle-hcd-test").glob("*.tif"))
    if not files:
        pytest.skip("no Kaggle HCD patches in shared data")
    return files


@pytest.fixture
def client(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A TestClient (lifespan started) over the tiny run, without an API key."""
    from fastapi.testclient import TestClient

    from histoscan.serve import ServeSettings, create_app

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    with TestClient(create_app(tiny_run, ServeSettings(device="cpu"))) as c:
        yield c
