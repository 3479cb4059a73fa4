"""Fixtures for the server tests: a tiny run folder, a test client, live uvicorn servers and headless Chromium."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from run_fixtures import make_run as build_run

CHROMIUM = Path(os.environ.get("HISTOSCAN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _uvicorn(app: Any) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def live_server(tiny_run: Path) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """`with live_server(**settings) as url:` uvicorn serving the tiny run on 127.0.0.1 in a thread."""
    from histoscan.serve import ServeSettings, create_app

    def start(**settings: Any) -> contextlib.AbstractContextManager[str]:
        settings.setdefault("api_key", None)
        if settings["api_key"] is None:
            os.environ.pop("HISTOSCAN_API_KEY", None)
        return _uvicorn(create_app(tiny_run, ServeSettings(device="cpu", **settings)))

    return start


@pytest.fixture(scope="module")
def server(live_server: Callable[..., contextlib.AbstractContextManager[str]]) -> Iterator[str]:
    """Base URL of a live server over the tiny run, without an API key."""
    with live_server() as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (skipped when it is not installed)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (CI: bash .ci/install-browser.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
