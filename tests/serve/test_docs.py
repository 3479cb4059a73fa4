"""/docs (Swagger UI) and /redoc render offline: assets from histoscan's own routes, nothing from elsewhere."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

URL = re.compile(r"""(?:https?:)?//[^\s"'<>()]+""")


def _local(url: str) -> bool:
    return url.startswith(("data:", "blob:", "about:")) or urlsplit(url).hostname == "127.0.0.1"


def _offline_page(browser: Any) -> tuple[Any, list[str], list[str]]:
    """A page whose every request to a host other than 127.0.0.1 is aborted and recorded, as are the
    browser's Content-Security-Policy refusals (loads the page's policy stopped before any request)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    external: list[str] = []
    refused: list[str] = []

    def route(r: Any) -> None:
        if _local(r.request.url):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda req: None if _local(req.url) else external.append(req.url))
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    return page, external, refused


def test_docs_html_names_no_outside_url(client) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert URL.findall(r.text) == [], path  # every asset is a path on this server
        assert "default-src 'self'" in r.headers["content-security-policy"]
    html = client.get("/docs").text
    for asset in re.findall(r"""(?:src|href)="(/static/docs/[^"]+)\"""", html):
        assert client.get(asset).status_code == 200, asset
    assert "/static/docs/redoc.standalone.js" in client.get("/redoc").text
    js = client.get("/static/docs/redoc.standalone.js")
    assert js.status_code == 200 and len(js.content) > 500_000 and b"cdn.redoc.ly" not in js.content


def test_swagger_ui_and_redoc_render_with_the_network_blocked(server: str, browser: Any) -> None:
    for path in ("/docs", "/redoc"):
        html = httpx.get(server + path).text
        assert all(
            urlsplit(u if ":" in u else "http:" + u).hostname == "127.0.0.1" for u in URL.findall(html)
        )

    page, external, refused = _offline_page(browser)
    try:
        page.goto(server + "/docs")
        for op in ("/v1/predict", "/v1/explain", "/v1/preview", "/v1/model", "/healthz"):
            page.locator(".opblock-summary-path", has_text=re.compile(f"^{re.escape(op)}$")).wait_for(
                timeout=30_000
            )
        assert page.locator("button.authorize").is_visible()  # the bearer key can be entered here
        # Swagger UI works, not just draws: try GET /healthz against this server
        page.locator(".opblock-summary-path", has_text=re.compile("^/healthz$")).click()
        page.get_by_role("button", name="Try it out").click()
        page.get_by_role("button", name="Execute").click()
        page.locator(".live-responses-table .response-col_status", has_text="200").wait_for(timeout=30_000)

        page.goto(server + "/redoc")
        page.locator("[role=menuitem]", has_text="Predict").first.wait_for(timeout=30_000)
        page.get_by_text("/v1/explain").first.wait_for(timeout=30_000)
        assert page.locator("h1", has_text="histoscan").first.is_visible()
    finally:
        page.context.close()
    assert external == [], external
    assert refused == [], refused  # nor did the page's Content-Security-Policy have to stop a load
