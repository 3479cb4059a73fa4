"""A cohort's tables: cohort.csv (one row per slide) and a self-contained, sortable index.html."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from histoscan.folders import CohortDir, SlideDir
from histoscan.utils.fs import atomic_write_text

COLUMNS = (
    "id",
    "path",
    "status",
    "error",
    "tissue_mm2",
    "tumour_mm2",
    "max_probability",
    "tumour_tiles",
    "seconds",
    "model_id",
)
_FORMATS = {"tissue_mm2": "{:.4f}", "tumour_mm2": "{:.4f}", "max_probability": "{:.4f}", "seconds": "{:.2f}"}


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return ""
    return _FORMATS[key].format(v) if key in _FORMATS and isinstance(v, int | float) else str(v)


def write_cohort_csv(path: Path, rows: list[dict]) -> Path:
    """cohort.csv with COLUMNS (status ok | failed | pending), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r, k) for k in COLUMNS])
    return atomic_write_text(path, buf.getvalue())


_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}th,td{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0;user-select:none;text-align:left}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-height:160px;max-width:240px;display:block}.failed{background:#fff0f0}.pending{background:#fffbe6}
.err{color:#a00;max-width:32em}.imgs{display:flex;gap:6px}
"""

_JS = """
document.querySelectorAll('th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var tbody = document.querySelector('tbody'), asc = !th.classList.contains('asc');
    document.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y), r;
      if (x === '' && y === '') r = 0; else if (x === '') r = 1; else if (y === '') r = -1;
      else if (!isNaN(nx) && !isNaN(ny) && th.dataset.num) r = nx - ny;
      else r = x.localeCompare(y, undefined, {numeric: true});
      return (x === '' || y === '') ? r : (asc ? r : -r);
    });
    rows.forEach(function(r){tbody.appendChild(r);});
  });
});
"""

_HEAD = (
    ("", False, "slide"),
    ("id", False, "id"),
    ("status", False, "status"),
    ("tissue_mm2", True, "tissue mm²"),
    ("tumour_mm2", True, "tumour mm²"),
    ("max_probability", True, "max probability"),
    ("tumour_tiles", True, "tumour tiles"),
    ("seconds", True, "seconds"),
    ("error", False, "error"),
)


def write_index(out: Path, rows: list[dict], title: str, note: str) -> Path:
    """index.html: every slide's thumbnail and overlay (relative links into <id>/) with its figures.

    Self-contained: inline CSS and JavaScript, no external URL; click a column header to sort.
    """
    e = html.escape
    head = "".join(f"<th{' data-num=1' if num else ''}>{e(label)}</th>" for _, num, label in _HEAD)
    body = []
    for r in rows:
        sid = e(r["id"])
        if r["status"] == "ok":
            f = SlideDir(sid)  # the slide's files, relative to index.html
            thumb, overlay, summary, regions = (
                p.as_posix() for p in (f.thumbnail, f.overlay, f.summary_path, f.regions)
            )
            imgs = (
                f'<div class="imgs"><a href="{thumb}"><img src="{thumb}" alt="slide" '
                f'loading="lazy"></a><a href="{overlay}"><img src="{overlay}" '
                f'alt="overlay" loading="lazy"></a></div>'
            )
            name = f'<a href="{summary}">{sid}</a> · <a href="{regions}">regions</a>'
        else:
            imgs, name = "", sid
        cells = [
            f'<td data-v="{sid}">{imgs}</td>',
            f'<td data-v="{sid}" title="{e(str(r["path"]))}">{name}</td>',
        ]
        for key, num, _ in _HEAD[2:]:
            text = _cell(r, key)
            cls = ' class="n"' if num else ' class="err"' if key == "error" else ""
            cells.append(f'<td{cls} data-v="{e(text)}">{e(text)}</td>')
        body.append(f'<tr class="{e(r["status"])}">{"".join(cells)}</tr>')
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1><p>{e(note)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<script>{_JS}</script></body></html>\n"
    )
    return atomic_write_text(CohortDir(out).index_path, page)
