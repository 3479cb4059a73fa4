"""Whole-slide readers (OpenSlide; tifffile for other TIFFs) reading regions lazily, and tumour regions."""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from histoscan.errors import HistoscanInputError

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

    Subclasses implement `_read(level, x_l, y_l, w, h)` returning uint8 h x w x 3 RGB for a box in level
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


class OpenSlideReader(SlideReader):
    """Any format OpenSlide reads (.svs, .ndpi, .mrxs, .scn, tiled TIFF, ...)."""

    def __init__(self, path: Path, slide: object):
        self._slide = slide
        mpp, source = _openslide_mpp(slide.properties)  # type: ignore[attr-defined]
        super().__init__(
            path,
            [tuple(d) for d in slide.level_dimensions],  # type: ignore[attr-defined]
            [float(d) for d in slide.level_downsamples],  # type: ignore[attr-defined]
            mpp,
            source,
            "openslide",
        )
        self.vendor = slide.properties.get("openslide.vendor", "")  # type: ignore[attr-defined]

    def read_region(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        region = self._slide.read_region((int(x0), int(y0)), level, (int(size[0]), int(size[1])))  # type: ignore
        return _rgba_to_rgb(np.asarray(region))

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        return self.read_region(round(x * ds), round(y * ds), level, (w, h))

    def close(self) -> None:
        self._slide.close()  # type: ignore[attr-defined]


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA onto white (OpenSlide leaves regions outside the scanned area transparent)."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return (rgb // 255).astype(np.uint8)


def _openslide_mpp(props: dict) -> tuple[float | None, str]:
    if props.get("openslide.mpp-x"):
        return _checked(float(props["openslide.mpp-x"])), "openslide.mpp-x"
    unit, res = props.get("tiff.ResolutionUnit", ""), props.get("tiff.XResolution")
    if res and unit in _UM_PER_UNIT and float(res) > 0:
        mpp = _checked(_UM_PER_UNIT[unit] / float(res))
        if mpp:
            return mpp, "tiff resolution tags"
    return _description_mpp(props.get("tiff.ImageDescription", "")), "ImageDescription MPP"


def _description_mpp(text: str) -> float | None:
    m = re.search(r"\bMPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", text or "")
    return _checked(float(m.group(1))) if m else None


def _checked(mpp: float) -> float | None:
    return mpp if _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1] else None


class TiffReader(SlideReader):
    """Plain or pyramidal TIFF through tifffile, decoding only the tiles/strips a region touches.

    Hand-rolled segment reader because tifffile's own lazy access (`aszarr`) needs zarr, which histoscan does
    not depend on; decoded segments are kept in a small LRU cache shared by the reader threads.
    """

    def __init__(self, path: Path, tif: object, cache_segments: int = 256):
        import tifffile

        self._tif = tif
        series = tif.series[0]  # type: ignore[attr-defined]
        self._pages = [lvl.keyframe for lvl in series.levels]
        for page in self._pages:
            if page.planarconfig != 1 or page.imagedepth != 1:
                raise HistoscanInputError(f"{path}: unsupported TIFF layout (planar or volumetric image)")
        dims = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
        page0 = self._pages[0]
        mpp, source = None, "ImageDescription MPP"
        unit = page0.resolutionunit
        unit_name = {tifffile.RESUNIT.INCH: "inch", tifffile.RESUNIT.CENTIMETER: "centimeter"}.get(unit)
        if unit == tifffile.RESUNIT.MICROMETER:
            unit_name = "micrometer"
        if unit_name and page0.resolution[0] > 0:
            mpp, source = _checked(_UM_PER_UNIT[unit_name] / page0.resolution[0]), "tiff resolution tags"
        if mpp is None:
            mpp, source = _description_mpp(page0.description), "ImageDescription MPP"
        super().__init__(path, dims, [dims[0][0] / d[0] for d in dims], mpp, source, "tifffile")
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_segments
        self._lock = threading.Lock()

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
        if seg is None:  # empty segment
            seg = np.full(shape, 255, np.uint8)
        seg = _to_rgb8(np.asarray(seg)[0])
        with self._lock:
            self._cache[key] = seg
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return seg

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        page = self._pages[level]
        lw, lh = self.level_dimensions[level]
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

    def close(self) -> None:
        self._tif.close()  # type: ignore[attr-defined]


def _to_rgb8(seg: np.ndarray) -> np.ndarray:
    """A decoded segment (h, w, samples) of any common sample type -> uint8 RGB."""
    if seg.ndim == 2:
        seg = seg[..., None]
    if seg.dtype == np.uint16:
        seg = (seg >> 8).astype(np.uint8)
    elif seg.dtype == bool:
        seg = seg.astype(np.uint8) * 255
    elif seg.dtype != np.uint8:
        raise HistoscanInputError(f"unsupported TIFF sample type {seg.dtype} (expected 8/16-bit RGB or grey)")
    if seg.shape[-1] == 1:
        return np.repeat(seg, 3, axis=-1)
    return np.ascontiguousarray(seg[..., :3])


def open_slide(path: str | Path, mpp: float | None = None, reader: str = "auto") -> SlideReader:
    """Open a whole-slide image: OpenSlide first, tifffile for TIFFs OpenSlide cannot read.

    A generic TIFF whose pyramid OpenSlide does not see (levels stored as SubIFDs, as tifffile and bfconvert
    write them) is read through tifffile, which does.

    Args:
        path: the slide file.
        mpp: the slide's level-0 µm/px, overriding (or supplying) what the file's metadata says.
        reader: "auto", "openslide" or "tifffile".

    Raises:
        HistoscanInputError: missing file, or a file neither library can read.
    """
    path = Path(path)
    if not path.is_file():
        raise HistoscanInputError(f"{path}: slide not found")
    result: SlideReader | None = None
    errors = []
    if reader in ("auto", "openslide"):
        try:
            import openslide

            result = OpenSlideReader(path, openslide.OpenSlide(str(path)))
        except Exception as e:  # OpenSlideUnsupportedFormatError / OpenSlideError / PIL errors for odd files
            errors.append(f"openslide: {e}".strip())
    generic = result is not None and result.vendor == "generic-tiff"
    if result is None or generic and reader == "auto":
        try:
            tiff = _open_tiff(path)
        except HistoscanInputError:
            if result is None:
                raise
            tiff = None
        except Exception as e:
            errors.append(f"tifffile: {e}".strip())
            if result is None:
                raise HistoscanInputError(
                    f"{path}: not a slide OpenSlide or tifffile can read ({'; '.join(errors)})"
                ) from None
            tiff = None
        if tiff is not None and (result is None or len(tiff.level_dimensions) > len(result.level_dimensions)):
            if result is not None:
                result.close()
            result = tiff
        elif tiff is not None:
            tiff.close()
    if mpp is not None:
        if mpp <= 0:
            raise HistoscanInputError(f"--mpp {mpp}: must be a positive µm/px")
        result.mpp, result.mpp_source = float(mpp), "--mpp"
    return result


def grid_rings(mask: np.ndarray) -> list[tuple[tuple[slice, slice], np.ndarray, list[list[tuple[int, int]]]]]:
    """Exact boundaries of the 4-connected components of a boolean grid, in grid-vertex (x=col, y=row) units.

    Returns one (bounding slices, cell mask within them, [outer ring, *holes]) per component. Rings are
    closed, have no collinear vertices and never repeat a vertex; the outer ring has positive shoelace area
    (counter-clockwise in x-right/y-up axes, the RFC 7946 rule), holes negative; a hole may touch its outer
    ring at a corner.
    Hand-rolled (walking the cell edges) because scikit-image/shapely are not dependencies.
    """
    labels, _ = ndimage.label(mask)
    result = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == k
        rings = [[(x + sl[1].start, y + sl[0].start) for x, y in r] for r in _trace(comp)]
        rings.sort(key=lambda r: -_signed_area(r))
        result.append((sl, comp, rings))
    return result


def _trace(comp: np.ndarray) -> list[list[tuple[int, int]]]:
    p = np.pad(comp, 1)
    inner = p[1:-1, 1:-1]
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # directed edges with the cell on the right (screen, y down): top +x, right +y, bottom -x, left -y
    for nb, (ox, oy), d in (
        (p[:-2, 1:-1], (0, 0), (1, 0)),
        (p[1:-1, 2:], (1, 0), (0, 1)),
        (p[2:, 1:-1], (1, 1), (-1, 0)),
        (p[1:-1, :-2], (0, 1), (0, -1)),
    ):
        for r, c in zip(*np.nonzero(inner & ~nb), strict=True):
            out.setdefault((int(c) + ox, int(r) + oy), []).append(d)
    rings = []
    while out:
        start = next(iter(out))
        d0 = out[start].pop()
        if not out[start]:
            del out[start]
        ring, v, d = [start], (start[0] + d0[0], start[1] + d0[1]), d0
        while True:
            cands = out.get(v, []) + ([d0] if v == start else [])
            # at a saddle (two edges leave the vertex) turn left: keeps the background cell on our left,
            # so each ring bounds one background region and never crosses itself
            nd = cands[0] if len(cands) == 1 else (d[1], -d[0])
            if v == start and nd == d0:
                break
            out[v].remove(nd)
            if not out[v]:
                del out[v]
            if nd != d:
                ring.append(v)
            v, d = (v[0] + nd[0], v[1] + nd[1]), nd
        if d != d0:
            ring.append(start)
        else:
            ring = ring[1:] + [ring[1]]  # the start vertex was mid-edge
        rings.append(ring if ring[0] == ring[-1] else ring + [ring[0]])
    return rings


def _signed_area(ring: list[tuple[float, float]]) -> float:
    x = np.array([p[0] for p in ring], float)
    y = np.array([p[1] for p in ring], float)
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2)


def tumour_regions(heat: np.ndarray, threshold: float, cell0: float, offset0: float, mpp: float) -> dict:
    """QuPath-importable GeoJSON FeatureCollection of connected tumour tiles (probability >= threshold).

    Coordinates are level-0 pixels: grid vertex (x, y) -> (offset0 + x * cell0, offset0 + y * cell0).
    """
    tumour = np.nan_to_num(heat, nan=-1.0) >= threshold
    features = []
    for sl, comp, rings in grid_rings(tumour):
        p = heat[sl][comp]
        coords = [
            [[round(offset0 + x * cell0, 3), round(offset0 + y * cell0, 3)] for x, y in r] for r in rings
        ]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "measurements": {
                        "mean_probability": float(p.mean()),
                        "max_probability": float(p.max()),
                        "n_tiles": int(comp.sum()),
                        "area_mm2": float(comp.sum() * (cell0 * mpp / 1000.0) ** 2),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _open_tiff(path: Path) -> TiffReader:
    import tifffile

    tif = tifffile.TiffFile(str(path))
    try:
        return TiffReader(path, tif)
    except Exception as e:
        tif.close()
        if isinstance(e, HistoscanInputError):
            raise
        raise HistoscanInputError(f"{path}: TIFF without a readable image ({e})") from None
