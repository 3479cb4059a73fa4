"""A cohort's tables: cohort.csv (one row per slide) and a self-contained, sortable index.html (the jinja2
template histoscan/templates/cohort_index.html.j2, autoescaped)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from histoscan.folders import CohortDir, SlideDir
from histoscan.utils.fs import atomic_write_text
from histoscan.utils.html import render_html

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
    "truth_tile_auc",  # with --truth: the map scored against the slide's outlines (empty: not scored)
    "truth_dice",
    "truth_lesions",
    "truth_froc",
)
_FORMATS = {"tissue_mm2": "{:.4f}", "tumour_mm2": "{:.4f}", "max_probability": "{:.4f}", "seconds": "{:.2f}",
            "truth_tile_auc": "{:.4f}", "truth_dice": "{:.4f}", "truth_froc": "{:.4f}"}  # fmt: skip


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


_HEAD = (
    ("", False, "slide"),
    ("id", False, "id"),
    ("status", False, "status"),
    ("tissue_mm2", True, "tissue mm²"),
    ("tumour_mm2", True, "tumour mm²"),
    ("max_probability", True, "max probability"),
    ("tumour_tiles", True, "tumour tiles"),
    ("seconds", True, "seconds"),
    ("truth_tile_auc", True, "tile AUC"),
    ("truth_dice", True, "Dice"),
    ("truth_lesions", True, "lesions"),
    ("truth_froc", True, "FROC"),
    ("error", False, "error"),
)


def _links(sid: str) -> dict[str, str]:
    """A finished slide's files the index links to, relative to index.html."""
    f = SlideDir(sid)
    files = {"thumbnail": f.thumbnail, "overlay": f.overlay, "summary": f.summary_path, "regions": f.regions}
    return {k: p.as_posix() for k, p in files.items()}


def write_index(out: Path, rows: list[dict], title: str, note: str) -> Path:
    """index.html: every slide's thumbnail and overlay (relative links into <id>/) with its figures.

    Self-contained: inline CSS and JavaScript, no external URL; click a column header to sort.
    """
    table = [
        {
            "id": r["id"],
            "path": str(r["path"]),
            "status": r["status"],
            "links": _links(r["id"]) if r["status"] == "ok" else None,
            "cells": [
                (_cell(r, key), "n" if num else "err" if key == "error" else "") for key, num, _ in _HEAD[2:]
            ],
        }
        for r in rows
    ]
    page = render_html(
        "cohort_index.html.j2",
        title=title,
        note=note,
        head=[(label, num) for _, num, label in _HEAD],
        rows=table,
    )
    return atomic_write_text(CohortDir(out).index_path, page)
