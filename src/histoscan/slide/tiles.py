"""Slide tiling: the tile grid at the model's µm/px, and tiles streamed by background threads."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from histoscan.errors import HistoscanInputError
from histoscan.folders import SlideDir
from histoscan.ranges import Options, opt
from histoscan.utils.numeric import sigmoid

if TYPE_CHECKING:
    from histoscan.slide.io import SlideReader

OUTPUTS = SlideDir.OUTPUTS  # what `histoscan slide` writes (the names: SlideDir)


@dataclass
class SlideOptions(Options):
    """How a slide is mapped. Every default, range and help text of `histoscan slide` / `slides` lives here.

    `mpp` is the SLIDE's level-0 µm/px (overrides the file's metadata); the patch µm/px comes from the
    model, or `model_mpp` when the run recorded none. `stride` is the tile step in model pixels (None: half
    the tile size, `default_stride`); below the tile size the tiles overlap and the heatmap has one cell per
    step, the mean probability of the tiles covering it. `smooth` is the sigma, in tile widths, of a Gaussian
    smoothing of the heatmap's logits over the tissue cells (0: none). Both defaults were chosen on truth
    mosaics of held-out PCam patches (benchmarks/bench_maps.py, docs/benchmarks.md).
    """

    # each field is the CLI option of `histoscan slide/slides` (histoscan.arguments builds it); its range is
    # checked as the option is parsed, and by __post_init__ when a SlideOptions is built from Python
    mpp: float | None = opt(
        None,
        "the SLIDE's level-0 µm/px, overriding its metadata (required when the slide records none); the patch "
        "µm/px comes from the model",
        kind=float, low=0, low_open=True, high=1000,
    )  # fmt: skip
    model_mpp: float | None = opt(
        None, "µm/px of the training patches when the run records none (PCam: 0.972)",
        kind=float, low=0, low_open=True, high=1000,
    )  # fmt: skip
    stride: int | None = opt(
        None,
        "tile step in model pixels, at most the tile size (default: half the tile size); below the tile size "
        "the tiles overlap and each heatmap cell (one per step) is the mean of the tiles covering it; the tile "
        "size (e.g. 96) classifies 4x fewer tiles",
        kind=int,
        low=1,
        high=4096,
    )  # fmt: skip  (and at most the model's tile size, checked when it is known)
    smooth: float = opt(
        0.75, "Gaussian smoothing of the heatmap's logits over the tissue, sigma in tile widths (0: off)",
        kind=float, low=0, high=100, metavar="SIGMA",
    )  # fmt: skip
    threshold: float | None = opt(None, "tumour threshold (default: the run's)", kind=float, low=0, high=1)
    batch_size: int = opt(64, "tiles per batch", kind=int, low=1, high=65_536)
    level: int | None = opt(
        None, "pyramid level to read (default: best for the mpp)", kind=int, low=0, high=100
    )  # None: the coarsest not coarser than the model's
    min_tissue: float = opt(0.25, "tissue fraction to classify a tile", kind=float, low=0, high=1)
    explain: int = opt(
        0,
        "Grad-CAM of the top-K tumour tiles (of the K most probable tiles, marked below-threshold, when no "
        "tile reaches the threshold)",
        kind=int, low=0, high=10_000, metavar="K",
    )  # fmt: skip
    label_map: str | None = opt(
        None,
        "with --truth: NAME=LABEL,... class names of the outlines to tumour / normal / ignore, over the defaults "
        "(Camelyon _0 _1 _2 Tumor metastases Exclusion; QuPath Tumor Normal Stroma Other)",
        metavar="MAP",
    )
    force: bool = opt(False, cli=False)  # set from the command's --force
    read_threads: int = opt(2, "tile-reading threads per slide", kind=int, low=1, high=256, metavar="N")
    # ready batches queued ahead of the model
    prefetch: int = opt(4, kind=int, low=1, high=1024, cli=False)
    reader: Literal["auto", "openslide", "tifffile"] = opt(
        "auto", "slide reader", choices=("auto", "openslide", "tifffile")
    )
    # min longer side of the mask/overlay thumbnail (grown to >= 8 px per tile)
    thumbnail_size: int = opt(1024, kind=int, low=16, high=65_536, cli=False)


def default_stride(image_size: int) -> int:
    """The tile step when none is given: half the tile, so each heatmap cell averages 2 x 2 tiles."""
    return max(1, image_size // 2)


@dataclass
class TileGrid:
    """Tiles of `image_size` model px = `tile0` level-0 px, every `stride0` level-0 px, read at `level`."""

    level: int
    downsample: float
    tile0: float
    stride0: float
    read_size: int
    image_size: int
    rows: int
    cols: int

    def origins(self, rc: np.ndarray) -> np.ndarray:
        """Level-0 top-left (x, y) of tiles at grid (row, col) pairs, shape (N, 2) int64."""
        return np.round(rc[:, ::-1] * self.stride0).astype(np.int64)

    @property
    def cell_offset(self) -> float:
        """Level-0 offset of this grid's heatmap cells from its origin: 0 for the heatmap grid (`cells()`), the
        centre stride0-sized part of the tile for a grid of overlapping tiles."""
        return (self.tile0 - self.stride0) / 2

    @property
    def cover(self) -> int:
        """Heatmap cells per tile side: a tile covers the cells whose centre it contains."""
        return int(math.floor(self.tile0 / self.stride0 - 0.5 + 1e-9)) + 1

    def cells(self) -> TileGrid:
        """The heatmap's grid: cells of stride0 level-0 px from the slide's corner, one per cell centre that a
        tile covers (the tile grid itself when stride = tile size)."""
        m = self.cover
        return replace(self, tile0=self.stride0, rows=self.rows + m - 1, cols=self.cols + m - 1)


def tiles_covering(cells: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Tiles (rows x cols bool) that cover at least one True cell of the heatmap grid `cells`."""
    m, out = grid.cover, np.zeros((grid.rows, grid.cols), bool)
    for dy in range(m):
        for dx in range(m):
            out |= cells[dy : dy + grid.rows, dx : dx + grid.cols]
    return out


def average_tiles(values: np.ndarray, rc: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Heatmap (grid.cells() shape, float32): each cell the mean of `values` of the tiles at `rc` covering it
    (NaN where none does). With stride = tile size, the tile values in place."""
    m = grid.cover
    shape = (grid.rows + m - 1, grid.cols + m - 1)
    total, count = np.zeros(shape), np.zeros(shape)
    for dy in range(m):
        for dx in range(m):  # (row, col) pairs are unique: no index repeats within one pass
            total[rc[:, 0] + dy, rc[:, 1] + dx] += values
            count[rc[:, 0] + dy, rc[:, 1] + dx] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def smooth_heat(heat: np.ndarray, sigma: float, eps: float = 1e-4) -> np.ndarray:
    """Gaussian smoothing (sigma in cells) of the logits of a probability map over its finite cells only
    (normalised convolution: background cells neither contribute nor change; NaN stays NaN)."""
    from scipy import ndimage

    if sigma <= 0:
        return heat
    ok = np.isfinite(heat)
    p = np.clip(np.where(ok, heat, 0.5), eps, 1 - eps).astype(np.float64)
    z = np.where(ok, np.log(p / (1 - p)), 0.0)
    num = ndimage.gaussian_filter(z, sigma, mode="constant", truncate=3.0)
    den = ndimage.gaussian_filter(ok.astype(np.float64), sigma, mode="constant", truncate=3.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sigmoid(num / den)
    return np.where(ok, out, np.nan).astype(np.float32)


def plan_grid(
    reader: SlideReader,
    image_size: int,
    model_mpp: float,
    stride: int | None = None,
    level: int | None = None,
) -> TileGrid:
    """Tile geometry covering the slide at the model's resolution, read from the best pyramid level."""
    from histoscan.slide.io import best_level  # lazy: slide_io imports scipy

    need = model_mpp / reader.mpp  # level-0 px per model px
    tile0 = image_size * need
    stride0 = (stride or image_size) * need
    if stride is not None and not 0 < stride <= image_size:
        raise HistoscanInputError(
            f"--stride {stride}: must be between 1 and the model's tile size {image_size}"
        )
    if level is None:
        level = best_level(reader.level_downsamples, need)
    elif not 0 <= level < len(reader.level_downsamples):
        raise HistoscanInputError(
            f"--level {level}: the slide has levels 0..{len(reader.level_downsamples) - 1}"
        )
    ds = reader.level_downsamples[level]
    w0, h0 = reader.dimensions
    cols = max(1, math.ceil(max(w0 - tile0, 0) / stride0 - 1e-9) + 1)
    rows = max(1, math.ceil(max(h0 - tile0, 0) / stride0 - 1e-9) + 1)
    return TileGrid(level, ds, tile0, stride0, max(1, round(tile0 / ds)), image_size, rows, cols)


def tile_tissue_fraction(mask: np.ndarray, grid: TileGrid, dimensions: tuple[int, int]) -> np.ndarray:
    """Fraction of each tile (rows x cols) covered by the thumbnail tissue mask (integral-image box sums)."""
    h, w = mask.shape
    sx, sy = dimensions[0] / w, dimensions[1] / h
    ii = np.zeros((h + 1, w + 1), np.int64)
    ii[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    xs = np.arange(grid.cols) * grid.stride0
    ys = np.arange(grid.rows) * grid.stride0
    x0 = np.clip(np.floor(xs / sx), 0, w).astype(int)
    x1u = np.maximum(np.ceil((xs + grid.tile0) / sx).astype(int), x0 + 1)
    y0 = np.clip(np.floor(ys / sy), 0, h).astype(int)
    y1u = np.maximum(np.ceil((ys + grid.tile0) / sy).astype(int), y0 + 1)
    x1, y1 = np.clip(x1u, 0, w), np.clip(y1u, 0, h)
    box = ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0]
    return box / np.outer(y1u - y0, x1u - x0)  # tile parts beyond the slide edge count as background


def read_tile(reader: SlideReader, grid: TileGrid, x: int, y: int) -> np.ndarray:
    """One tile at the model's resolution: uint8 image_size x image_size x 3."""
    region = reader.read_region(int(x), int(y), grid.level, (grid.read_size, grid.read_size))
    if grid.read_size != grid.image_size:  # antialiased PIL resampling from the chosen level
        size = (grid.image_size, grid.image_size)
        region = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR))
    return region


def stream_tiles(
    reader: SlideReader,
    grid: TileGrid,
    xy: np.ndarray,
    batch_size: int,
    read_threads: int = 2,
    prefetch: int = 4,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start index, uint8 batch) for tiles at level-0 `xy`, read by `read_threads` background threads.

    A producer thread fills a bounded queue of ready batches (reading overlaps inference; at most `prefetch`
    batches are held), so memory stays flat however large the slide is.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with ThreadPoolExecutor(max(1, read_threads)) as pool:
                for start in range(0, len(xy), batch_size):
                    chunk = xy[start : start + batch_size]
                    batch = np.empty((len(chunk), grid.image_size, grid.image_size, 3), np.uint8)

                    def fill(i: int, batch: np.ndarray = batch, chunk: np.ndarray = chunk) -> None:
                        batch[i] = read_tile(reader, grid, *chunk[i])

                    list(pool.map(fill, range(len(chunk))))
                    if not put((start, batch)):
                        return
            put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it with its traceback
            put(e)

    thread = threading.Thread(target=produce, name="slide-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
