"""tiffslide backend: TIFF slides through tiffslide (tifffile + zarr), for TIFFs OpenSlide cannot read fully.

OpenSlide reads a generic TIFF's first page only when its pyramid is stored as SubIFDs (as tifffile, bfconvert
and libvips write them), and no stripped TIFF at all; tiffslide reads both, and the vendor formats it knows.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import tiffslide

from histoscan.errors import HistoscanInputError
from histoscan.slide.backends.base import SlideReader, properties_mpp


class _LevelTiffSlide(tiffslide.TiffSlide):
    """A TiffSlide whose read_region takes its location in the read level's own pixels (tiffslide's documented
    hook), so a level-0 location is not rounded twice."""

    def _read_region_loc_transform(self, location: tuple[int, int], level: int) -> tuple[int, int]:
        return location


class TiffSlideReader(SlideReader):
    """A TIFF slide through tiffslide: only the tiles or strips a region touches are decoded.

    tiffslide opens the file and reads its metadata and pyramid; regions of the common layout (one series,
    samples interleaved) are read by `_Segments` from tifffile's pages, the rest by tiffslide's read_region.
    """

    def __init__(self, path: Path, slide: tiffslide.TiffSlide):
        self._slide = slide
        props = slide.properties
        self._segments = _Segments.of(slide)
        vendor = props.get("openslide.vendor") or "generic-tiff"
        mpp, source = properties_mpp(props, tags_first=vendor == "generic-tiff")
        super().__init__(
            path,
            [(int(w), int(h)) for w, h in slide.level_dimensions],
            [float(d) for d in slide.level_downsamples],
            mpp,
            source,
            "tiffslide",
            vendor=vendor,
        )

    @classmethod
    def open(cls, path: Path) -> TiffSlideReader:
        """Open `path`: tifffile's exceptions for a file that is no TIFF, HistoscanInputError for a TIFF
        without a slide image tiffslide can read (volumetric, unknown axes)."""
        slide = _LevelTiffSlide(str(path))
        try:
            return cls(path, slide)
        except Exception as e:
            slide.close()
            raise HistoscanInputError(f"{path}: TIFF without a readable image ({e})") from None

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._segments is not None:
            return self._segments.read(level, x, y, w, h)
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)  # white beyond the image, as OpenSlide's composited regions
        x_a, x_b, y_a, y_b = max(x, 0), min(x + w, lw), max(y, 0), min(y + h, lh)
        if x_b > x_a and y_b > y_a:
            region = self._slide.read_region(
                (x_a, y_a), level, (x_b - x_a, y_b - y_a), as_array=True, padding=False
            )
            out[y_a - y : y_b - y, x_a - x : x_b - x] = to_rgb8(np.asarray(region))
        return out

    def close(self) -> None:
        self._slide.close()


class _Segments:
    """Region reads from tifffile's tiled (or stripped) pages, each decoded tile/strip kept in a small LRU cache
    shared by the reader threads.

    Kept instead of tiffslide's read_region, measured (tiffslide 3.0.1, zarr 3.1, 2 shared CPU cores): every
    224 px tile of a slide read once in raster order, a fresh reader each time, ms a tile here vs through
    tiffslide: cmu-1-small-region.svs 0.7 vs 3.3, tcga-cr-7395-01a-01-ts1.svs (JPEG 2000) 4.8 vs 21.9, a
    tifffile-written JPEG SubIFD pyramid (benchmarks/truth_mosaic.py) 0.3 vs 4.0, a stripped TIFF 0.1 vs 5.8.
    `histoscan slide` (simple-cnn at 96 px, stride 48) took 9 s instead of 14-16 s on the tcga slide and 22 s
    instead of 23-24 s on a 2880 px JPEG pyramid. tiffslide pays ~2 ms of zarr machinery a call and decodes
    every slide tile a region touches anew, while a map's tiles straddle slide tiles and overlap each other.
    """

    def __init__(self, pages: list, cache_segments: int = 256):
        self._pages = pages
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_segments
        self._lock = threading.Lock()

    @classmethod
    def of(cls, slide: tiffslide.TiffSlide) -> _Segments | None:
        """The segment reader of `slide`'s pyramid, or None for a layout it does not read (planar samples,
        a volume, a pyramid composed of several series): those go through tiffslide."""
        props = slide.properties
        interleaved = props.get("tiffslide.series-axes") in ("YXS", "YX")
        if props.get("tiffslide.series-composition") or not interleaved:
            return None
        series = slide.ts_tifffile.series[props.get("tiffslide.series-index", 0)]
        pages = [level.keyframe for level in series.levels]
        if any(p.planarconfig != 1 or p.imagedepth != 1 for p in pages):
            return None
        return cls(pages)

    def _segment(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            page = self._pages[level]
            fh = page.parent.filehandle
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if count:
                fh.seek(offset)
                data = fh.read(count)
            else:
                data = None
        seg, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        if seg is None:  # a segment the file leaves out (sparse TIFF): white, as OpenSlide shows it
            seg = np.full(shape, 255, np.uint8)
        seg = to_rgb8(np.asarray(seg)[0])
        with self._lock:
            self._cache[key] = seg
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return seg

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) of the level-pixel box at (x, y), white outside the image."""
        page = self._pages[level]
        lw, lh = int(page.imagewidth), int(page.imagelength)
        out = np.full((h, w, 3), 255, np.uint8)
        sw = page.tilewidth if page.is_tiled else lw
        sh = page.tilelength if page.is_tiled else page.rowsperstrip
        sh = min(sh, lh) or lh
        across = math.ceil(lw / sw)
        x_a, x_b, y_a, y_b = max(x, 0), min(x + w, lw), max(y, 0), min(y + h, lh)
        for ty in range(y_a // sh, math.ceil(y_b / sh) if y_b > y_a else 0):
            for tx in range(x_a // sw, math.ceil(x_b / sw) if x_b > x_a else 0):
                seg = self._segment(level, ty * across + tx)
                sx0, sy0 = tx * sw, ty * sh
                ix0, iy0 = max(x_a, sx0), max(y_a, sy0)
                ix1, iy1 = min(x_b, sx0 + seg.shape[1]), min(y_b, sy0 + seg.shape[0])
                if ix1 > ix0 and iy1 > iy0:
                    out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = seg[
                        iy0 - sy0 : iy1 - sy0, ix0 - sx0 : ix1 - sx0
                    ]
        return out


def to_rgb8(region: np.ndarray) -> np.ndarray:
    """A region (h, w, samples) of any common sample type -> uint8 RGB."""
    if region.ndim == 2:
        region = region[..., None]
    if region.dtype == np.uint16:
        region = (region >> 8).astype(np.uint8)
    elif region.dtype == bool:
        region = region.astype(np.uint8) * 255
    elif region.dtype != np.uint8:
        raise HistoscanInputError(
            f"unsupported TIFF sample type {region.dtype} (expected 8/16-bit RGB or grey)"
        )
    if region.shape[-1] == 1:
        return np.repeat(region, 3, axis=-1)
    return np.ascontiguousarray(region[..., :3])
