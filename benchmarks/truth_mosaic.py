"""Truth mosaics: pyramidal TIFF slides laid out from labelled patches, with their cell truth.

Benchmark and test code (benchmarks/make_mosaic.py, bench_maps.py, tests/slide/test_maps.py), not part of the
installed package; the scores of a map against the truth are `histoscan.slide.scoring`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from histoscan.slide.io import tumour_regions
from histoscan.slide.scoring import GLASS, NORMAL, TUMOUR

GLASS_RGB = (242, 241, 239)


@dataclass(frozen=True)
class Mosaic:
    """A laid-out slide: `image` (level 0), `truth` cell labels, each `cell` px, cell (0, 0) at `origin` px."""

    image: np.ndarray
    truth: np.ndarray
    cell: int
    origin: int
    mpp: float

    def truth_json(self) -> dict:
        """What the truth .json records besides the label grid."""
        t = self.truth == TUMOUR
        n_regions = ndimage.label(t)[1]
        return {
            "cell_px": self.cell,
            "origin_px": self.origin,
            "mpp": self.mpp,
            "labels": {"glass": GLASS, "normal": NORMAL, "tumour": TUMOUR},
            "grid": list(self.truth.shape),
            "n_tissue_cells": int((self.truth != GLASS).sum()),
            "n_tumour_cells": int(t.sum()),
            "n_tumour_regions": int(n_regions),
            "tumour_mm2": float(t.sum() * (self.cell * self.mpp / 1000) ** 2),
        }


def mosaic_layout(
    size: int, seed: int, margin: int = 2, tumour: float = 0.3, holes: int = 3, min_region: int = 3
) -> np.ndarray:
    """Cell labels (GLASS/NORMAL/TUMOUR) of a (size + 2 margin)² mosaic.

    Inside a glass margin: an irregular tissue section (a smoothed-noise blob, ~80 % of the size² square, one
    piece without holes), blob-like tumour regions in it (thresholded smoothed noise, ~`tumour` of the tissue;
    regions under `min_region` cells become normal) and `holes` single glass cells inside normal tissue.

    Args:
        size: side of the tissue square in cells.
        seed: the layout's random seed.
        margin: glass cells on each side.
        tumour: approximate fraction of tissue cells that are tumour.
        holes: glass cells punched into normal tissue (each with tissue all around).
        min_region: smallest tumour region kept, in cells.
    """
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), max(size / 8, 1.0), mode="wrap")
    shape = -6 * np.hypot(yy, xx) + 0.5 * noise / max(noise.std(), 1e-9)
    tissue = shape > np.quantile(shape, 0.2)
    lab, n = ndimage.label(tissue)
    if n > 1:
        tissue = lab == 1 + np.argmax(ndimage.sum(tissue, lab, range(1, n + 1)))
    tissue = ndimage.binary_fill_holes(tissue)
    t_noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    tum = tissue & (t_noise > np.quantile(t_noise[tissue], 1 - tumour))
    lab, n = ndimage.label(tum)
    if n:
        sizes = ndimage.sum(tum, lab, range(1, n + 1))
        tum = np.isin(lab, 1 + np.flatnonzero(sizes >= min_region))
    inner = np.where(tum, TUMOUR, np.where(tissue, NORMAL, GLASS)).astype(np.int8)
    surrounded = ndimage.binary_erosion(tissue, np.ones((3, 3), bool), border_value=0) & ~tum
    spots = np.argwhere(surrounded)
    for r, c in spots[rng.permutation(len(spots))[:holes]]:
        inner[r, c] = GLASS
    truth = np.zeros((size + 2 * margin,) * 2, np.int8)
    truth[margin : margin + size, margin : margin + size] = inner
    return truth


def _draw(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """k indices into n items: without replacement while they last, then again (fresh permutations)."""
    if n == 0:
        raise ValueError("no patches to draw from")
    reps = -(-k // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:k]


def paint_mosaic(
    truth: np.ndarray,
    normal: np.ndarray,
    tumour: np.ndarray,
    seed: int,
    offset: int = 0,
    mpp: float = 0.972,
    glass_noise: float = 2.0,
) -> Mosaic:
    """The slide image of `truth`: each NORMAL/TUMOUR cell one patch (random flip/rotation) on noisy glass.

    Patches are drawn without replacement from `normal` / `tumour` (uint8 N x S x S x 3; S is the cell size)
    and reused only when a pool runs out. `offset` glass px before cell (0, 0) shifts the cell grid off
    the slide's pixel grid multiples (a tile grid starting at 0 then straddles cells).
    """
    rng = np.random.default_rng(seed)
    cell = int(normal.shape[1])
    rows, cols = truth.shape
    h, w = rows * cell + offset, cols * cell + offset
    img = rng.normal(0, glass_noise, (h, w, 3)) + np.array(GLASS_RGB, float)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    for label, pool in ((NORMAL, normal), (TUMOUR, tumour)):
        where = np.argwhere(truth == label)
        for (r, c), i in zip(where, _draw(rng, len(where), len(pool)), strict=True):
            k = int(rng.integers(8))
            patch = np.rot90(pool[i][::-1] if k >= 4 else pool[i], k % 4)
            y, x = offset + r * cell, offset + c * cell
            img[y : y + cell, x : x + cell] = patch
    return Mosaic(img, truth, cell, offset, mpp)


def write_pyramid(
    path: Path, image: np.ndarray, mpp: float, levels: int = 3, tile: int = 256, quality: int = 90
) -> None:
    """A tiled JPEG pyramidal TIFF as scanners write them: level 0 plus 2x box-downsampled SubIFD levels,
    resolution tags in px/cm (µm/px = 1e4 / XResolution) and `MPP =` in the description."""
    import tifffile

    kw = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
    }
    with tifffile.TiffWriter(path) as tw:
        for k in range(levels):
            img = image if k == 0 else np.asarray(Image.fromarray(image).reduce(2**k))
            res = 1e4 / (mpp * 2**k)
            tw.write(
                img,
                subifds=levels - 1 if k == 0 else None,
                subfiletype=1 if k else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                description=f"histoscan truth mosaic|MPP = {mpp}" if k == 0 else None,
                metadata=None,
                **kw,
            )


def save_mosaic(mosaic: Mosaic, slide: Path, levels: int = 3, quality: int = 90) -> dict:
    """Write the slide (`slide`, a .tif) and its truth beside it: `<stem>.truth.npy` (cell labels),
    `<stem>.truth.json` (geometry and counts), `<stem>.truth.geojson` (tumour polygons, level-0 px) and
    `<stem>.xml` (the same outlines as ASAP XML)."""
    slide = Path(slide)
    write_pyramid(slide, mosaic.image, mosaic.mpp, levels, quality=quality)
    stem = slide.with_suffix("")
    np.save(f"{stem}.truth.npy", mosaic.truth)
    meta = mosaic.truth_json()
    Path(f"{stem}.truth.json").write_text(json.dumps(meta, indent=2))
    heat = (mosaic.truth == TUMOUR).astype(np.float32)
    regions = tumour_regions(heat, 0.5, mosaic.cell, mosaic.origin, mosaic.mpp)
    Path(f"{stem}.truth.geojson").write_text(json.dumps(regions))
    Path(f"{stem}.xml").write_text(asap_xml(regions))  # the outlines as Camelyon ships them (`tiles --annotations`)
    return meta


def asap_xml(regions: dict) -> str:
    """ASAP XML of GeoJSON tumour polygons, as Camelyon16 ships outlines: each exterior ring an annotation of
    group `_0` (tumour), each hole one of group `_2` (normal tissue inside a tumour outline)."""
    shapes = []
    for feat in regions["features"]:
        g = feat["geometry"]
        polys = g["coordinates"] if g["type"] == "MultiPolygon" else [g["coordinates"]]
        for rings in polys:
            shapes += [("_0", rings[0]), *[("_2", hole) for hole in rings[1:]]]
    rows = []
    for i, (group, ring) in enumerate(shapes):
        pts = ring[:-1] if ring[0] == ring[-1] else ring
        coords = "".join(f'<Coordinate Order="{j}" X="{x}" Y="{y}" />' for j, (x, y) in enumerate(pts))
        rows.append(f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
                    f"<Coordinates>{coords}</Coordinates></Annotation>")  # fmt: skip
    groups = "".join(f'<Group Name="{g}" PartOfGroup="None"><Attributes /></Group>' for g in ("_0", "_2"))
    return (f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{"".join(rows)}</Annotations>'
            f"<AnnotationGroups>{groups}</AnnotationGroups></ASAP_Annotations>\n")  # fmt: skip
