"""What every slide-reader backend provides: a pyramid's geometry, level-0 µm/px and region reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

_MPP_RANGE = (
    0.05,
    50.0,
)  # µm/px; a TIFF's default 72/96/300 dpi (85-350 µm/px) is not a microscope resolution
_UM_PER_UNIT = {
    "inch": 25400.0,
    "centimeter": 10000.0,
    "cm": 10000.0,
    "millimeter": 1000.0,
    "micrometer": 1.0,
}


@dataclass
class SlideReader:
    """A slide's pyramid: level sizes (w, h), downsamples, level-0 µm/px (None if unknown), region reads.

    Backends implement `_read(level, x_l, y_l, w, h)` returning uint8 h x w x 3 RGB for a box in level
    pixels, white outside the image.
    """

    path: Path
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None
    mpp_source: str
    backend: str
    notes: list[str] = field(default_factory=list)
    vendor: str = ""

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    def read_region(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `size` (w, h) level pixels whose top-left is level-0 pixel (x0, y0)."""
        ds = self.level_downsamples[level]
        return self._read(level, int(round(x0 / ds)), int(round(y0 / ds)), int(size[0]), int(size[1]))

    def thumbnail(self, max_side: int) -> np.ndarray:
        """RGB uint8 thumbnail whose longer side is at most `max_side`, read band by band (bounded memory)."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_side if max(w0, h0) > max_side else 1.0
        tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        level = best_level(self.level_downsamples, scale)
        lw, lh = self.level_dimensions[level]
        out = np.empty((th, tw, 3), np.uint8)
        band = max(1, 4_000_000 // max(lw, 1))  # level rows per read: ~12 MB of RGB at a time
        ty = 0
        for y in range(0, lh, band):
            rows = min(band, lh - y)
            ty_end = th if y + rows >= lh else round((y + rows) * th / lh)
            if ty_end > ty:
                img = Image.fromarray(self._read(level, 0, y, lw, rows))
                out[ty:ty_end] = np.asarray(
                    img.resize((tw, ty_end - ty), Image.Resampling.BILINEAR, reducing_gap=2.0)
                )
            ty = ty_end
        return out

    def close(self) -> None:
        """Release the file."""

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError


def best_level(downsamples: list[float], wanted: float) -> int:
    """The coarsest level whose downsample is at most `wanted` (1 % tolerance: 2.0005-style downsamples)."""
    ok = [i for i, d in enumerate(downsamples) if d <= wanted * 1.01]
    return max(ok, key=lambda i: downsamples[i]) if ok else 0


def properties_mpp(props: dict, tags_first: bool = False) -> tuple[float | None, str]:
    """(level-0 µm/px or None, where it came from) from OpenSlide-style properties: `openslide.mpp-x`, the
    TIFF resolution tags, then `MPP = ` in the ImageDescription. `tags_first`: the resolution tags are the
    source (a generic TIFF, where a reader's mpp-x is derived from them)."""
    if props.get("openslide.mpp-x") and not tags_first:
        return checked_mpp(float(props["openslide.mpp-x"])), "openslide.mpp-x"
    unit, res = str(props.get("tiff.ResolutionUnit", "")).lower(), props.get("tiff.XResolution")
    if res and unit in _UM_PER_UNIT and float(res) > 0:
        mpp = checked_mpp(_UM_PER_UNIT[unit] / float(res))
        if mpp:
            return mpp, "tiff resolution tags"
    return description_mpp(props.get("tiff.ImageDescription", "")), "ImageDescription MPP"


def description_mpp(text: str) -> float | None:
    """The `MPP = <number>` of an ImageDescription (Aperio style), None when absent or implausible."""
    m = re.search(r"\bMPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", text or "")
    return checked_mpp(float(m.group(1))) if m else None


def checked_mpp(mpp: float) -> float | None:
    """`mpp` when it is a microscope resolution, else None."""
    return mpp if _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1] else None
