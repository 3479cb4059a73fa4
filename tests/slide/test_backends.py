"""Slide-reader backends and the factory that picks one: layouts, metadata, both read paths of tiffslide."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histoscan.errors import HistoscanInputError
from histoscan.slide.io import open_slide

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 255, (300, 410, 3), dtype=np.uint8)


def _exact(reader, img: np.ndarray) -> None:
    """Regions inside the image equal it; the parts beyond its edge are white."""
    np.testing.assert_array_equal(reader.read_region(37, 101, 0, (150, 90)), img[101:191, 37:187])
    edge = reader.read_region(380, 280, 0, (50, 40))
    np.testing.assert_array_equal(edge[:20, :30], img[280:, 380:])
    assert (edge[20:] == 255).all() and (edge[:, 30:] == 255).all()
    assert (reader.read_region(-60, -60, 0, (50, 50)) == 255).all()


@pytest.mark.parametrize(
    "layout, data, kw, want",
    [
        ("grey", IMG[..., 0], {"photometric": "minisblack"}, np.repeat(IMG[..., :1], 3, -1)),
        ("16-bit", IMG.astype(np.uint16) * 257, {"photometric": "rgb"}, IMG),
        ("rgba", np.dstack([IMG, IMG[..., :1]]), {"photometric": "rgb", "extrasamples": [2]}, IMG),
        ("channels", IMG.transpose(2, 0, 1), {"photometric": "minisblack", "metadata": {"axes": "CYX"}}, IMG),
    ],
)
def test_tiff_layouts_read_exactly(tmp_path: Path, layout: str, data: np.ndarray, kw: dict, want) -> None:
    """Grey, 16-bit and RGBA through tifffile's pages; a channel-per-page series (CYX) through tiffslide's
    read_region."""
    path = tmp_path / f"{layout}.tif"
    tifffile.imwrite(path, data, tile=(64, 64), **kw)
    reader = open_slide(path, reader="tiffslide")  # a one-level tiled TIFF: "auto" keeps OpenSlide
    assert reader.backend == "tiffslide" and (reader._segments is None) == (layout == "channels")
    _exact(reader, want)
    reader.close()


def test_planar_samples_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, IMG.transpose(2, 0, 1), photometric="rgb", planarconfig="separate", tile=(64, 64))
    with pytest.raises(HistoscanInputError, match=r"planar.tif: TIFF without a readable image \(.*SYX"):
        open_slide(path, reader="tiffslide")


def _pyramid(path: Path, tile: int = 64) -> list[np.ndarray]:
    """A tiled JPEG SubIFD pyramid of odd-sized levels (410 x 300, 205 x 150, 103 x 75); its decoded levels."""
    levels = [IMG, IMG[::2, ::2], IMG[::4, ::4]]
    with tifffile.TiffWriter(path) as tw:
        for k, img in enumerate(levels):
            tw.write(
                img,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                subifds=2 if k == 0 else None,
                subfiletype=1 if k else 0,
                description="generic|MPP = 0.25" if k == 0 else None,
                metadata=None,
            )
    with tifffile.TiffFile(path) as tf:
        return [lvl.asarray() for lvl in tf.series[0].levels]


def test_both_tiffslide_read_paths_agree_on_every_level(tmp_path: Path) -> None:
    decoded = _pyramid(tmp_path / "p.tif")
    fast, plain = open_slide(tmp_path / "p.tif"), open_slide(tmp_path / "p.tif", reader="tifffile")
    plain._segments = None  # tiffslide's own read_region
    assert fast._segments is not None and len(fast.level_dimensions) == 3
    assert fast.mpp == 0.25 and fast.mpp_source == "ImageDescription MPP"  # no resolution tags
    for level, img in enumerate(decoded):
        h, w = img.shape[:2]
        assert fast.level_dimensions[level] == (w, h)
        ds = fast.level_downsamples[level]
        for x, y in ((0, 0), (17, 33), (w - 20, h - 10)):
            got = fast.read_region(round(x * ds), round(y * ds), level, (40, 30))
            np.testing.assert_array_equal(
                got, plain.read_region(round(x * ds), round(y * ds), level, (40, 30))
            )
            np.testing.assert_array_equal(got[: h - y, : w - x], img[y : y + 30, x : x + 40])


def test_threads_read_what_one_thread_reads(tmp_path: Path) -> None:
    """The segment cache is shared by the reader threads (the map's read threads)."""
    _pyramid(tmp_path / "p.tif", tile=32)
    reader = open_slide(tmp_path / "p.tif")
    xy = [(int(x), int(y)) for x, y in RNG.integers(-20, 400, (200, 2))]
    one = [reader.read_region(x, y, 0, (48, 48)) for x, y in xy]
    reader._segments._cache.clear()
    with ThreadPoolExecutor(4) as pool:
        many = list(pool.map(lambda p: reader.read_region(p[0], p[1], 0, (48, 48)), xy))
    assert all(np.array_equal(a, b) for a, b in zip(one, many, strict=True))


def test_factory_picks_and_names_backends(tmp_path: Path) -> None:
    path = tmp_path / "p.tif"
    _pyramid(path)
    assert open_slide(path).backend == "tiffslide"  # OpenSlide sees one level of a SubIFD pyramid
    only = open_slide(path, reader="openslide")
    assert only.backend == "openslide" and len(only.level_dimensions) == 1
    assert open_slide(path, reader="tifffile").backend == "tiffslide"  # the former reader's name
    with pytest.raises(
        HistoscanInputError, match="--reader pillow: must be auto or one of openslide, tiffslide"
    ):
        open_slide(path, reader="pillow")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all" * 100)
    with pytest.raises(
        HistoscanInputError, match=r"junk.tif: not a slide OpenSlide or tiffslide can read \("
    ):
        open_slide(junk)


def test_resolution_tags_and_their_plausibility(tmp_path: Path) -> None:
    """px/cm tags give µm/px; a 72 dpi default is no microscope resolution (MPP in the description wins)."""
    tags = tmp_path / "tags.tif"
    tifffile.imwrite(tags, IMG, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    reader = open_slide(tags)
    assert (reader.backend, reader.mpp, reader.mpp_source) == ("tiffslide", 0.5, "tiff resolution tags")
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(
        dpi, IMG, photometric="rgb", resolution=(72, 72), resolutionunit="INCH", description="x|MPP = 0.5"
    )
    reader = open_slide(dpi)
    assert (reader.mpp, reader.mpp_source) == (0.5, "ImageDescription MPP")
    _exact(reader, IMG)  # strips, not tiles
