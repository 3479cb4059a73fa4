"""OpenSlide backend: every format OpenSlide reads (.svs, .ndpi, .mrxs, .scn, tiled TIFF, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from histoscan.slide.backends.base import SlideReader, properties_mpp


class OpenSlideReader(SlideReader):
    """A slide opened by OpenSlide (the openslide-bin wheel); regions outside the scan come back white."""

    def __init__(self, path: Path, slide: openslide.OpenSlide):
        self._slide = slide
        mpp, source = properties_mpp(slide.properties)
        super().__init__(
            path,
            [tuple(d) for d in slide.level_dimensions],
            [float(d) for d in slide.level_downsamples],
            mpp,
            source,
            "openslide",
        )
        self.vendor = slide.properties.get("openslide.vendor", "")

    @classmethod
    def open(cls, path: Path) -> OpenSlideReader:
        """Open `path`; OpenSlide's own exceptions when it cannot read it."""
        return cls(path, openslide.OpenSlide(str(path)))

    def read_region(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        region = self._slide.read_region((int(x0), int(y0)), level, (int(size[0]), int(size[1])))
        return rgba_to_rgb(np.asarray(region))

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        return self.read_region(round(x * ds), round(y * ds), level, (w, h))

    def close(self) -> None:
        self._slide.close()


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA onto white (OpenSlide leaves regions outside the scanned area transparent)."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return (rgb // 255).astype(np.uint8)
