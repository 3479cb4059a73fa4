"""The web page in headless Chromium: probability and Grad-CAM, a failed upload's card, the API-key hint."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

SCREENSHOT = Path(os.environ.get("HISTOSCAN_SCREENSHOT", "/tmp/histoscan_serve_page.png"))

pytestmark = pytest.mark.timeout(180)


def _page(browser: Any) -> tuple[Any, list[str]]:
    """A new page at 1100 px whose JavaScript errors are collected."""
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def test_page_shows_api_probability_and_gradcam(server: str, browser: Any, hcd_files: list[Path]) -> None:
    patch = hcd_files[2]
    api = httpx.post(
        f"{server}/v1/predict", files=[("files", (patch.name, patch.read_bytes(), "image/tiff"))]
    )
    assert api.status_code == 200
    expected = api.json()["predictions"][0]

    page, errors = _page(browser)
    try:
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
        page.close()


def test_failed_upload_card_shows_the_servers_error(server: str, browser: Any, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("tumour? no, this is a text file")
    answer = httpx.post(f"{server}/v1/predict", files=[("files", (bad.name, bad.read_bytes(), "text/plain"))])
    assert 400 <= answer.status_code < 500
    detail = answer.json()["detail"]

    page, errors = _page(browser)
    try:
        page.goto(server + "/")
        page.wait_for_function("document.querySelector('#model-info').textContent.includes('simple-cnn')")
        page.set_input_files("#file-input", str(bad))
        page.wait_for_selector(".card[data-state='done'], .card[data-state='failed']", timeout=60_000)
        card = page.locator(".card").first
        assert card.get_attribute("data-state") == "failed"
        assert card.locator(".note").text_content() == detail
        assert card.locator(".note").is_visible()
        # no broken-image placeholder: every <img> left in the card has loaded (here: none is left)
        broken = card.evaluate(
            "c => [...c.querySelectorAll('img')].filter(i => !i.hidden && i.naturalWidth === 0).length"
        )
        assert broken == 0
        text = card.inner_text()
        assert "…" not in text and "P(tumour)" not in text, text
        assert "failed" in card.locator(".label").text_content()
        assert "1 failed" in page.locator("#summary").text_content()
        assert not errors, errors
    finally:
        page.close()


def test_api_key_hint_points_at_the_key_field(
    live_server: Callable[..., Any], browser: Any, hcd_files: list[Path]
) -> None:
    with live_server(api_key="s3cret") as url:
        page, errors = _page(browser)
        try:
            page.goto(url + "/")
            hint = page.locator("#error")
            hint.wait_for(state="visible", timeout=30_000)
            assert "above" in hint.text_content() and "below" not in hint.text_content()
            toggle = page.locator("#settings summary").bounding_box()
            assert toggle["y"] + toggle["height"] <= hint.bounding_box()["y"]  # the toggle is above the hint
            assert page.locator("#settings").evaluate("d => d.open")  # and opened, its field focused
            assert page.evaluate("document.activeElement.id") == "api-key"
            page.fill("#api-key", "s3cret")
            page.click("#save-key")
            page.wait_for_function("document.querySelector('#model-info').textContent.includes('simple-cnn')")
            assert hint.is_hidden()
            page.set_input_files("#file-input", str(hcd_files[0]))
            page.wait_for_selector(".card[data-state='done'], .card[data-state='failed']", timeout=60_000)
            assert page.locator(".card").first.get_attribute("data-state") == "done"
            assert not errors, errors
        finally:
            page.evaluate("localStorage.clear()")
            page.close()


def test_card_says_when_the_image_was_fitted(server: str, browser: Any, idc_root: Path) -> None:
    edge = idc_root / "images" / "14078" / "14078_idx5_x1001_y1501_class0.png"  # 50x42: padded to 96x96
    page, errors = _page(browser)
    try:
        page.goto(server + "/")
        page.wait_for_function("document.querySelector('#model-info').textContent.includes('simple-cnn')")
        page.set_input_files("#file-input", str(edge))
        page.wait_for_selector(".card[data-state='done'], .card[data-state='failed']", timeout=120_000)
        card = page.locator(".card").first
        assert card.get_attribute("data-state") == "done", card.locator(".note").text_content()
        assert card.locator(".note").text_content() == "50×42 px, padded to 96×96 px for the model"
        assert card.get_attribute("data-fitted") == "padded 50x42 -> 96x96"
        with page.expect_download() as dl:
            page.click("#download-csv")
        header, row = Path(dl.value.path()).read_text().splitlines()
        assert header == "filename,id,probability,label,fitted,error"
        assert row.split(",")[4] == "padded 50x42 -> 96x96"
        assert not errors, errors
    finally:
        page.close()
