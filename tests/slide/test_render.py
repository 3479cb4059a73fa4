"""Slide pictures: colours anchored at the threshold, colour-bar mark, exact scale bar, caption and summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from matplotlib import colormaps
from PIL import Image
from run_fixtures import make_run

from histoscan.inference.base import Predictor
from histoscan.inference.predictor import load_predictor
from histoscan.slide.mapping import SlideOptions, map_slide
from histoscan.slide.render import (
    CMAP,
    NO_TISSUE,
    OVERLAY_ALPHA,
    ScaleBar,
    colour_bar,
    colour_norm,
    draw_scale_bar,
    probability_rgba,
    scale_bar,
)
from histoscan.utils.numeric import sigmoid

THRESHOLD_LOGIT = -0.583  # sigmoid: 0.358, the threshold of the user report
T = float(np.float32(sigmoid(np.float32(THRESHOLD_LOGIT))))  # exactly what the map stores for that logit
MID = tuple(colormaps[CMAP](0.5, bytes=True)[:3])  # the colour map's midpoint colour
# block colours of the synthetic slide -> logits: at the threshold, at 0.5, clearly tumour
BLOCKS = {(120, 60, 160): THRESHOLD_LOGIT, (200, 100, 150): 0.0, (150, 80, 120): 3.0}


def _colour(p: float, threshold: float = T) -> tuple[int, ...]:
    return tuple(int(v) for v in probability_rgba(np.array([p], np.float32), threshold)[0, :3])


def test_threshold_gets_the_midpoint_colour_and_nan_is_transparent() -> None:
    rgba = probability_rgba(np.array([[T, 0.5, 0.0, 1.0, np.nan]], np.float32), T)
    assert tuple(rgba[0, 0, :3]) == MID and rgba[0, 0, 3] == 255
    assert tuple(rgba[0, 2, :3]) == tuple(colormaps[CMAP](0.0, bytes=True)[:3])  # deep blue
    assert tuple(rgba[0, 3, :3]) == tuple(colormaps[CMAP](1.0, bytes=True)[:3])  # deep red
    assert rgba[0, 4, 3] == 0
    # 0.5 with a 0.358 threshold is tumour: on the red side, no longer the pale midpoint
    assert float(colour_norm(T)(0.5)) == pytest.approx(0.5 + 0.5 * (0.5 - T) / (1 - T))
    assert _colour(0.5) != MID and _colour(0.5)[0] > _colour(0.5)[2]
    assert _colour(0.3)[2] > _colour(0.3)[0]  # below the threshold: blue side
    for t in (0.0, 1.0, 1.5):  # --threshold at or beyond the ends still draws
        assert probability_rgba(np.array([0.2, 0.9], np.float32), t).shape == (2, 4)


def test_colour_bar_marks_the_threshold_at_its_middle() -> None:
    bar = np.asarray(colour_bar(T, 400)).astype(int)
    x = round(0.29 * bar.shape[1])  # the middle of the bar's axes (0.24 + 0.1 / 2)
    column = bar[:, x]
    coloured = np.flatnonzero(np.abs(column - column.mean(1, keepdims=True)).sum(1) > 30)
    top, bottom = coloured.min(), coloured.max()  # the bar's colours, from 1 (top) to 0 (bottom)
    line = [y for y in np.flatnonzero(column.sum(1) < 60) if top < y < bottom]  # not the bar's frame
    assert line and abs(np.mean(line) - (top + bottom) / 2) <= 3  # the threshold line halves the bar
    near = column[[min(line) - 3, max(line) + 3]]
    assert np.abs(near - np.array(MID)).max() <= 12  # pale yellow around the line


@pytest.mark.parametrize("threshold", [1.5, -0.5, 0.0, 1.0])
def test_colour_bar_of_a_threshold_at_or_outside_0_1_is_drawn(threshold: float) -> None:
    """A run's threshold.json outside 0..1 (edited by hand) once raised LinAlgError: it is marked at the bar's end."""
    bar = np.asarray(colour_bar(threshold, 300))
    assert bar.shape[0] >= 240 and bar.shape[1] > 0 and bar.std() > 0


@pytest.mark.parametrize(
    ("um_per_px", "width", "um"),
    [
        (1.4461879895561358, 766, 200),
        (1.0, 640, 100),
        (0.25, 4000, 200),
        (16.0, 1000, 2000),
        (40.0, 4000, 20000),
    ],
)
def test_scale_bar_is_round_and_10_to_25_percent(um_per_px: float, width: int, um: float) -> None:
    bar = scale_bar(um_per_px, width)
    assert bar.um == um and bar.px == round(um / um_per_px)
    assert 0.10 * width <= bar.px <= 0.25 * width
    assert ScaleBar(500, 10, 50).label == "500 µm" and ScaleBar(2000, 10, 200).label == "2 mm"


def _black_runs(img: np.ndarray) -> int:
    """The longest horizontal run of pure black pixels."""
    best = 0
    for row in (img == 0).all(-1):
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        if len(edges):
            best = max(best, int((edges[1::2] - edges[::2]).max()))
    return best


def test_scale_bar_is_drawn_exactly() -> None:
    bar = scale_bar(1.4461879895561358, 766)
    img = Image.new("RGB", (766, 1024), (230, 200, 220))
    x0, y0, x1, y1 = draw_scale_bar(img, bar)
    assert x1 - x0 + 1 == bar.px == 138 and y1 >= y0
    assert _black_runs(np.asarray(img)) == bar.px


class BlockPredictor(Predictor):
    """Each tile's logit from its colour (the nearest block colour; white: -6)."""

    def __init__(self, card):
        self.card = card

    def __call__(self, images: np.ndarray) -> np.ndarray:
        mean = np.asarray(images).reshape(len(images), -1, 3).mean(1)
        cols = np.array(list(BLOCKS), float)
        logits = np.array(list(BLOCKS.values()), np.float32)
        d = np.abs(mean[:, None] - cols[None]).sum(-1)
        return np.where(d.min(1) < 30, logits[d.argmin(1)], np.float32(-6.0)).astype(np.float32)


@pytest.fixture(scope="module")
def block_map(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A 640 x 640 px slide at 1 µm/px, tiles of 128 px: one block at the threshold, one at 0.5, one tumour."""
    tmp = tmp_path_factory.mktemp("blocks")
    img = np.full((640, 640, 3), 240, np.uint8)
    for (r, c), colour in zip([(1, 1), (1, 3), (3, 2)], BLOCKS, strict=True):
        img[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128] = colour
    path = tmp / "blocks.tif"
    tifffile.imwrite(
        path, img, tile=(128, 128), photometric="rgb", resolution=(1e4, 1e4), resolutionunit="CENTIMETER"
    )
    card = load_predictor(make_run(tmp / "run", image_size=32, mpp=4.0, threshold=T)).card
    s = map_slide(BlockPredictor(card), path, tmp / "out", SlideOptions(stride=32, smooth=0), progress=False)
    return s, tmp / "out"


def test_heatmap_colours_and_legend(block_map) -> None:
    s, out = block_map
    assert s["n_tissue_tiles"] == 3 and s["n_tumour_tiles"] == 3  # a tile at the threshold is called
    page = np.asarray(Image.open(out / "heatmap.png").convert("RGB"))
    cell = (1024 // 5) ** 2  # one heatmap cell in pixels
    count = lambda rgb: int((page == np.array(rgb, np.uint8)).all(-1).sum())  # noqa: E731
    assert count(MID) >= cell  # the tile at the threshold: the midpoint colour (the legend adds a few px)
    assert count(_colour(0.5)) >= cell and _colour(0.5) != MID
    assert count(NO_TISSUE) >= 22 * cell  # the untouched cells are grey, and so is the legend's swatch


def test_overlay_colour_scale_bar_caption_and_summary(block_map) -> None:
    s, out = block_map
    with Image.open(out / "overlay.png") as im:
        caption = im.text["Description"]
        page = np.asarray(im.convert("RGB")).astype(int)
    bar = s["scale_bar"]
    tw = round(640 * 1.0 / bar["overlay_um_per_px"])  # thumbnail width
    assert tw == 640 and bar == {"um": 100.0, "px": 100, "overlay_um_per_px": 1.0}
    top = page.shape[0] - 640  # the caption block above the thumbnail
    body = page[top:, :tw]
    a = OVERLAY_ALPHA / 255
    at_threshold = body[192, 192]  # the centre of the block whose tile is at the threshold
    np.testing.assert_allclose(at_threshold, a * np.array(MID) + (1 - a) * np.array((120, 60, 160)), atol=2)
    at_half = body[192, 448]
    np.testing.assert_allclose(
        at_half, a * np.array(_colour(0.5)) + (1 - a) * np.array((200, 100, 150)), atol=2
    )
    assert _black_runs(body[-60:, : tw // 2].astype(np.uint8)) == bar["px"]  # the scale bar, exactly 100 µm
    for text in ("blocks.tif", "level 0 read at 1 µm/px", "slide 1 µm/px", "model simple-cnn at 4 µm/px",
                 f"threshold {T:.3g}", "threshold.json"):  # fmt: skip
        assert text in caption
    assert caption.splitlines() == s["caption"]
    assert s["level"] == 0 and s["level_mpp"] == 1.0 and s["tile_mpp"] == 4.0
    assert s["threshold_source"].startswith("threshold.json") and s["warnings"] == []
    assert json.loads((out / "summary.json").read_text())["level_mpp"] == 1.0
    with Image.open(out / "heatmap.png") as im:
        assert im.text["Description"] == caption
