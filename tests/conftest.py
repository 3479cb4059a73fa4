"""Shared fixtures: paths to ../shared/data (skipped when absent) and a per-test cache folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """$HISTOSCAN_SHARED_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("HISTOSCAN_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prepared-store caches go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("HISTOSCAN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $HISTOSCAN_SHARED_DATA)."""
    p = _shared_data()
    if not p.is_dir():
        pytest.skip(f"shared data not found at {p}")
    return p


@pytest.fixture(scope="session")
def idc_root(shared_data: Path) -> Path:
    """The real idc-breast patches."""
    return shared_data / "idc-breast"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test module: on a shared 2-core machine two threads contend and run 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
