"""Whole slides: the factory that opens one with a reader backend (slide/backends/), and tumour regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from histoscan.errors import HistoscanInputError
from histoscan.slide.backends import ALIASES, BACKENDS, backend
from histoscan.slide.backends.base import SlideReader, best_level

__all__ = ["SlideReader", "best_level", "grid_rings", "open_slide", "tumour_regions"]


def open_slide(path: str | Path, mpp: float | None = None, reader: str = "auto") -> SlideReader:
    """Open a whole-slide image: OpenSlide first, tiffslide for TIFFs OpenSlide cannot read.

    A generic TIFF whose pyramid OpenSlide does not see (levels stored as SubIFDs, as tifffile and bfconvert
    write them) or a stripped TIFF (which OpenSlide refuses) is read through tiffslide, which reads both.

    Args:
        path: the slide file.
        mpp: the slide's level-0 µm/px, overriding (or supplying) what the file's metadata says.
        reader: "auto", "openslide" or "tiffslide" ("tifffile": the same as "tiffslide").

    Raises:
        HistoscanInputError: missing file, or a file neither library can read.
    """
    path = Path(path)
    if not path.is_file():
        raise HistoscanInputError(f"{path}: slide not found")
    name = ALIASES.get(reader, reader)
    if name != "auto" and name not in BACKENDS:
        raise HistoscanInputError(f"--reader {reader}: must be auto or one of {', '.join(BACKENDS)}")
    result: SlideReader | None = None
    errors = []
    if name in ("auto", "openslide"):
        try:
            result = backend("openslide")(path)
        except Exception as e:  # OpenSlideUnsupportedFormatError / OpenSlideError / PIL errors for odd files
            errors.append(f"openslide: {e}".strip())
    generic = result is not None and result.vendor == "generic-tiff"
    if result is None or generic and name == "auto":
        try:
            tiff = backend("tiffslide")(path)
        except HistoscanInputError:
            if result is None:
                raise
            tiff = None
        except Exception as e:  # tifffile.TiffFileError for a file that is no TIFF
            errors.append(f"tiffslide: {e}".strip())
            if result is None:
                raise HistoscanInputError(
                    f"{path}: not a slide OpenSlide or tiffslide can read ({'; '.join(errors)})"
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
