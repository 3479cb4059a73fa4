"""SlideDir: the one owner of a slide output folder's layout (what `histoscan slide` writes; each slide of a
cohort gets one too, see :class:`CohortDir`).

heatmap.npy (probability per heatmap cell, NaN off tissue), heatmap.png, overlay.png, tiles.csv (one row per
tissue tile), regions.geojson (called tumour regions, QuPath-readable), summary.json (settings, counts, areas,
timings) and, with --explain, explain/ (an explanation folder, see :class:`ExplainDir`); a cohort's slides
add thumbnail.jpg.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from histoscan.utils.fs import atomic_write_text


class SlideDir:
    """A slide output folder: where each of its files is; summary.json and regions.geojson read and written."""

    HEATMAP = "heatmap.npy"
    HEATMAP_PNG = "heatmap.png"
    OVERLAY = "overlay.png"
    TILES = "tiles.csv"
    REGIONS = "regions.geojson"
    SUMMARY = "summary.json"
    THUMBNAIL = "thumbnail.jpg"
    EXPLAIN = "explain"
    OUTPUTS: ClassVar[tuple[str, ...]] = (HEATMAP, HEATMAP_PNG, OVERLAY, TILES, REGIONS, SUMMARY)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SlideDir({str(self.path)!r})"

    @property
    def heatmap(self) -> Path:
        return self.path / self.HEATMAP

    @property
    def heatmap_png(self) -> Path:
        return self.path / self.HEATMAP_PNG

    @property
    def overlay(self) -> Path:
        return self.path / self.OVERLAY

    @property
    def tiles(self) -> Path:
        return self.path / self.TILES

    @property
    def regions(self) -> Path:
        return self.path / self.REGIONS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def thumbnail(self) -> Path:
        return self.path / self.THUMBNAIL

    @property
    def explain(self) -> Path:
        return self.path / self.EXPLAIN

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def write_regions(self, regions: dict[str, Any]) -> None:
        atomic_write_text(self.regions, json.dumps(regions))

    def read_regions(self) -> dict[str, Any]:
        return json.loads(self.regions.read_text())
