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

from histoscan.utils.fs import atomic_write_json, atomic_write_text


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
    TRUTH = "truth.json"  # with --truth: the map scored against the slide's outlines
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

    @property
    def truth_path(self) -> Path:
        return self.path / self.TRUTH

    def write_truth(self, scores: dict[str, Any]) -> None:
        atomic_write_json(self.truth_path, scores)

    def read_truth(self) -> dict[str, Any] | None:
        """truth.json, or None when the slide was mapped without outlines."""
        return json.loads(self.truth_path.read_text()) if self.truth_path.is_file() else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def write_regions(self, regions: dict[str, Any]) -> None:
        atomic_write_text(self.regions, json.dumps(regions))

    def read_regions(self) -> dict[str, Any]:
        return json.loads(self.regions.read_text())
