"""The web page in headless Chromium: upload a patch, see the API's probability and a Grad-CAM overlay."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
SCREENSHOT = Path(os.environ.get("HISTOSCAN_SCREENSHOT", "/tmp/histoscan_serve_page.png"))

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"{CHROMIUM} not installed (CI: bash .ci/install-browser.sh)"
    ),
    pytest.mark.timeout(180),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run: Path) -> Iterator[str]:
    """uvicorn serving the tiny run on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    from histoscan.serve import ServeSettings, create_app

    os.environ.pop("HISTOSCAN_API_KEY", None)
    port = _free_port()
    app = create_app(tiny_run, ServeSettings(device="cpu", port=port))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_page_shows_api_probability_and_gradcam(server: str, hcd_files: list[Path]) -> None:
    from playwright.sync_api import sync_playwright

    patch = hcd_files[2]
    api = httpx.post(
        f"{server}/v1/predict", files=[("files", (patch.name, patch.read_bytes(), "image/tiff"))]
    )
    assert api.status_code == 200
    expected = api.json()["predictions"][0]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            page.wait_for_function("document.querySelector('#model-info').textContent.includes('simple-cnn')")
            page.set_input_files("#file-input", str(patch))
            card = page.locator(".card").first
            card.locator(".probability").wait_for()
            page.wait_for_selector(".card[data-state='done'], .card[data-state='failed']", timeout=120_000)
            assert card.get_attribute("data-state") == "done", card.locator(".note").text_content()
            shown = card.locator(".probability").text_content()
            assert shown == f"{expected['probability']:.4f}"
            assert float(card.locator(".probability").get_attribute("data-probability")) == pytest.approx(
                expected["probability"], abs=1e-6
            )
            assert card.locator(".label").text_content() == expected["class"]
            assert card.locator(".name").text_content() == patch.name
            assert card.get_attribute("data-gradcam") == "shown"
            size = card.locator("img.gradcam").evaluate(
                "img => [img.complete, img.naturalWidth, img.naturalHeight]"
            )
            assert size == [True, 288, 288]
            assert card.locator("img.thumb").evaluate("img => img.naturalWidth") == 96
            assert "1 predicted" in page.locator("#summary").text_content()
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
