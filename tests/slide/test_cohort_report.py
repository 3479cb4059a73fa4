"""The cohort's index.html (a jinja2 template): every value escaped, links only for finished slides."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from histoscan.slide.cohort_report import write_index


class _Cells(HTMLParser):
    """Each <tr>'s (tag, attributes) and text, with entities resolved, as a browser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _row(sid: str, status: str, path: str, error: str = "") -> dict:
    ok = status == "ok"
    return {
        "id": sid,
        "path": path,
        "status": status,
        "error": error,
        "tissue_mm2": 1.23456 if ok else None,
        "tumour_mm2": 0.5 if ok else None,
        "max_probability": 0.875 if ok else None,
        "tumour_tiles": 3 if ok else None,
        "seconds": 2.5,
        "model_id": "m@1",
    }


def test_index_escapes_names_paths_and_errors(tmp_path: Path) -> None:
    rows = [
        _row("a&b<c>", "ok", "/slides/a&b<c>.svs"),
        _row("bad'one", "failed", '/slides/"bad".tif', error="not a slide: <script>alert(1)</script> & more"),
    ]
    page = write_index(tmp_path, rows, "histoscan slides: x&y<z>", "note <b>bold</b>").read_text()
    assert page.count("<script>") == 1  # the page's own sorting script, not the error text
    assert "<b>" not in page and "a&b<c>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "<title>histoscan slides: x&amp;y&lt;z&gt;</title>" in page
    assert 'src="a&amp;b&lt;c&gt;/overlay.png"' in page and 'href="a&amp;b&lt;c&gt;/summary.json"' in page

    parser = _Cells()
    parser.feed(page)
    attrs = [a for _, a in parser.tags]
    assert {"title": "/slides/a&b<c>.svs", "data-v": "a&b<c>"} in attrs  # a browser reads the values back
    assert {"title": '/slides/"bad".tif', "data-v": "bad'one"} in attrs
    imgs = [a["src"] for t, a in parser.tags if t == "img"]
    assert imgs == ["a&b<c>/thumbnail.jpg", "a&b<c>/overlay.png"]  # none for the failed slide
    values = [a["data-v"] for t, a in parser.tags if t == "td"]
    truth = ["", "", "", ""]  # tile AUC, Dice, lesions, FROC: empty when a slide was not scored (--truth)
    assert values[:13] == ["a&b<c>", "a&b<c>", "ok", "1.2346", "0.5000", "0.8750", "3", "2.50", *truth, ""]
    assert values[13:] == ["bad'one", "bad'one", "failed", "", "", "", "", "2.50", *truth, rows[1]["error"]]
    assert [a.get("class") for t, a in parser.tags if t == "tr"] == [None, "ok", "failed"]
    assert "histoscan slides: x&y<z>" in parser.text and "note <b>bold</b>" in parser.text
