"""Fixtures for the server tests: a tiny simple-cnn run folder and a test client over it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from run_fixtures import make_run as build_run

# the serve defaults: 96 px (Kaggle HCD patches), 0.972 µm/px, BatchNorm statistics so outputs vary by image
_make_run = functools.partial(build_run, image_size=96, mpp=0.972, bn_stats=True)


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
