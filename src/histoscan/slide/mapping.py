"""Whole-slide tumour maps: tissue mask, tiles at the model's µm/px streamed through it, heatmap, regions."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import Predictor
from histoscan.slide.io import SlideReader, open_slide, tumour_regions
from histoscan.slide.tiles import (
    OUTPUTS,
    SlideOptions,
    TileGrid,
    otsu_threshold,
    plan_grid,
    read_tile,
    stream_tiles,
    tile_tissue_fraction,
    tissue_mask,
)
from histoscan.utils.fs import guard_output, staged_folder

__all__ = [  # the tiling names are re-exported from histoscan.slide.tiles
    "OUTPUTS",
    "SlideOptions",
    "TileGrid",
    "map_slide",
    "otsu_threshold",
    "plan_grid",
    "read_tile",
    "stream_tiles",
    "tile_tissue_fraction",
    "tissue_mask",
]

log = logging.getLogger(__name__)


def map_slide(
    predictor: Predictor,
    slide: str | Path,
    out: str | Path,
    options: SlideOptions | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Map a whole slide to tumour probabilities and write heatmap, overlay, tiles, regions and summary.

    Args:
        predictor: the model (image size, patch µm/px and threshold come from its card).
        slide: any OpenSlide format, or a plain/pyramidal TIFF.
        out: output folder (must be empty unless `options.force`); written in full or not at all.
        options: see :class:`SlideOptions`.
        progress: show a tqdm bar on stderr (on a terminal).
        echo: receives one start line (slide size, µm/px, level, tiles, model) before the tiles are read.

    Returns:
        The summary written to summary.json.
    """
    opts = options or SlideOptions()
    guard_output(out, opts.force, "folder", "--out")
    reader = open_slide(slide, opts.mpp, opts.reader)
    try:
        with staged_folder(out, opts.force) as tmp:
            return _map(predictor, reader, slide, tmp, opts, progress, echo)
    finally:
        reader.close()


def _map(
    predictor: Predictor,
    reader: SlideReader,
    slide: str | Path,
    out: Path,
    opts: SlideOptions,
    progress: bool,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """map_slide's work, writing into `out` (the staged folder)."""
    from tqdm import tqdm

    card = predictor.card
    t_start = time.perf_counter()
    if reader.mpp is None:
        raise HistoscanInputError(
            f"{slide}: no µm/px in the slide's metadata (openslide.mpp-x, TIFF resolution or MPP=); "
            "pass --mpp with the slide's level-0 µm/px"
        )
    model_mpp = opts.model_mpp or card.mpp
    if not model_mpp:
        raise HistoscanInputError(
            "--model-mpp: the run records no patch µm/px (config mpp); pass the training patches' µm/px "
            "(PCam: 0.972)"
        )
    grid = plan_grid(reader, card.image_size, float(model_mpp), opts.stride, opts.level)
    out.mkdir(parents=True, exist_ok=True)
    side = min(max(opts.thumbnail_size, math.ceil(8 * max(reader.dimensions) / grid.tile0)), 4096)
    thumb = reader.thumbnail(side)
    mask = tissue_mask(thumb)
    t_tiles = time.perf_counter()
    frac = tile_tissue_fraction(mask, grid, reader.dimensions)
    rc = np.argwhere(frac >= opts.min_tissue)
    xy = grid.origins(rc)
    if echo is not None:
        w0, h0 = reader.dimensions
        echo(
            f"slide: {Path(slide).name} {w0}x{h0} px at {reader.mpp:g} µm/px ({reader.mpp_source}); level "
            f"{grid.level} (downsample {grid.downsample:g}), tiles of {grid.tile0:.0f} level-0 px for "
            f"{card.model} at {float(model_mpp):g} µm/px; {len(rc)} tissue tiles of {grid.rows * grid.cols}"
        )
    probs = np.empty(len(rc), np.float32)
    with tqdm(
        total=len(rc), unit="tile", file=sys.stderr, disable=None if progress else True, desc=Path(slide).name
    ) as bar:
        for start, batch in stream_tiles(reader, grid, xy, opts.batch_size, opts.workers, opts.prefetch):
            probs[start : start + len(batch)] = predictor.predict_proba(batch, opts.batch_size)
            bar.update(len(batch))
    stain_line = predictor.stain_note("tissue tiles")
    t_regions = time.perf_counter()
    heat = np.full((grid.rows, grid.cols), np.nan, np.float32)
    heat[rc[:, 0], rc[:, 1]] = probs
    threshold = float(card.threshold if opts.threshold is None else opts.threshold)
    regions = tumour_regions(heat, threshold, grid.stride0, grid.cell_offset, reader.mpp)
    explained = (
        _explain(predictor, reader, grid, xy, probs, threshold, opts.explain, out) if opts.explain else []
    )
    w0, h0 = reader.dimensions
    cell_mm2 = (grid.stride0 * reader.mpp / 1000.0) ** 2
    n_tumour = int(np.sum(probs >= threshold))
    summary = {
        "slide": str(Path(slide).resolve()),
        "reader": reader.backend,
        "slide_mpp": reader.mpp,
        "slide_mpp_source": reader.mpp_source,
        "model": card.model,
        "checkpoint": card.weights,
        "backend": card.backend,
        "model_mpp": float(model_mpp),
        "dimensions": [w0, h0],
        "level": grid.level,
        "level_downsample": grid.downsample,
        "tile_size_px": grid.image_size,
        "tile_size_level0": grid.tile0,
        "stride_level0": grid.stride0,
        "read_size": grid.read_size,
        "grid": [grid.rows, grid.cols],
        "threshold": threshold,
        "min_tissue": opts.min_tissue,
        "n_tiles": grid.rows * grid.cols,
        "n_tissue_tiles": len(rc),
        "n_tumour_tiles": n_tumour,
        "n_regions": len(regions["features"]),
        "tissue_area_mm2": float(mask.sum() * (w0 / mask.shape[1]) * (h0 / mask.shape[0]))
        * (reader.mpp / 1000.0) ** 2,
        # tissue inside the tumour tiles (comparable with tissue_area_mm2); the polygons' area is larger
        # because a tile counts whole in regions.geojson
        "tumour_area_mm2": float(frac[rc[:, 0], rc[:, 1]][probs >= threshold].sum() * cell_mm2),
        "tumour_region_area_mm2": n_tumour * cell_mm2,
        "max_probability": float(probs.max()) if len(probs) else None,
        "explained": [str(p.relative_to(out)) for p in explained],
        "notes": list(reader.notes) + ([stain_line] if stain_line else []),
        "options": asdict(opts),
    }
    if not len(rc):
        summary["notes"].append("no tissue found: no tile reached --min-tissue; outputs are empty")
    if grid.tile0 < grid.image_size:
        summary["notes"].append("the model's µm/px is finer than the slide's: tiles are upsampled")
    t_write = time.perf_counter()
    _write_maps(out, heat, thumb, reader.dimensions, grid, regions, Path(slide).name)
    _write_tiles(out / "tiles.csv", rc, xy, probs, frac)
    (out / "regions.geojson").write_text(json.dumps(regions))
    np.save(out / "heatmap.npy", heat)
    t_end = time.perf_counter()
    summary["seconds"] = round(t_end - t_start, 3)
    summary["timings_s"] = {
        k: round(b - a, 3)
        for k, a, b in (
            ("open_and_tissue_mask", t_start, t_tiles),
            ("tiles", t_tiles, t_regions),
            ("regions", t_regions, t_write),
            ("write", t_write, t_end),
        )
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _explain(
    predictor: Predictor,
    reader: SlideReader,
    grid: TileGrid,
    xy: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    k: int,
    out: Path,
) -> list[Path]:
    """Grad-CAM of the k most probable tumour tiles into out/explain/."""
    try:
        from histoscan.explain.gradcam import explain_images  # lazy: only with --explain
    except ImportError as e:
        raise HistoscanInputError(f"--explain: histoscan.explain.gradcam is not available ({e})") from None
    order = [i for i in np.argsort(-probs, kind="stable")[:k] if probs[i] >= threshold]
    if not order:
        return []
    images = np.stack([read_tile(reader, grid, *xy[i]) for i in order])
    ids = [f"tile_x{xy[i][0]}_y{xy[i][1]}" for i in order]
    return list(explain_images(predictor, images, ids, out / "explain"))


def _write_tiles(path: Path, rc: np.ndarray, xy: np.ndarray, probs: np.ndarray, frac: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "probability", "row", "col", "tissue_fraction"])
        for (r, c), (x, y), p in zip(rc, xy, probs, strict=True):
            w.writerow([int(x), int(y), f"{p:.6f}", int(r), int(c), f"{frac[r, c]:.3f}"])


def _write_maps(
    out: Path,
    heat: np.ndarray,
    thumb: np.ndarray,
    dims: tuple[int, int],
    grid: TileGrid,
    regions: dict,
    title: str,
) -> None:
    """heatmap.png (one block per tile, transparent where no tissue) and overlay.png (over the thumbnail)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, and a second faster to import

    cmap = matplotlib.colormaps["RdYlBu_r"]
    rgba = (cmap(np.nan_to_num(heat, nan=0.0)) * 255).astype(np.uint8)
    rgba[np.isnan(heat)] = 0
    scale = max(1, 1024 // max(heat.shape))
    Image.fromarray(np.kron(rgba, np.ones((scale, scale, 1), np.uint8))).save(out / "heatmap.png")

    # compose at thumbnail resolution in numpy (one image for matplotlib to draw, no resampling)
    th, tw = thumb.shape[:2]
    sx, sy = dims[0] / tw, dims[1] / th
    cols = np.floor(((np.arange(tw) + 0.5) * sx - grid.cell_offset) / grid.stride0).astype(int)
    rows = np.floor(((np.arange(th) + 0.5) * sy - grid.cell_offset) / grid.stride0).astype(int)
    inside = (rows[:, None] >= 0) & (rows[:, None] < grid.rows) & (cols[None] >= 0) & (cols[None] < grid.cols)
    cell = rgba[np.clip(rows, 0, grid.rows - 1)][:, np.clip(cols, 0, grid.cols - 1)]
    alpha = Image.fromarray(np.where(inside & (cell[..., 3] > 0), 115, 0).astype(np.uint8))  # 45 % opacity
    # uint8 compositing in PIL: a few thumbnail-sized buffers, not float64 copies (flat memory on big slides)
    comp = Image.composite(
        Image.fromarray(np.ascontiguousarray(cell[..., :3])), Image.fromarray(thumb), alpha
    )
    draw = ImageDraw.Draw(comp)
    for feat in regions["features"]:
        for ring in feat["geometry"]["coordinates"]:
            draw.line([(x / sx, y / sy) for x, y in ring], fill=(0, 0, 0), width=max(1, round(tw / 600)))

    # matplotlib draws only the colour bar; the big image is pasted by PIL (matplotlib would resample it in
    # float64, ~100 MB per 1750 px thumbnail)
    fig = Figure(figsize=(1.7, (th + 40) / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    cax = fig.add_axes((0.2, 0.1, 0.12, 0.8))
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), cmap)
    fig.colorbar(mappable, cax=cax, label="tumour probability")
    canvas.draw()
    bar = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    page = Image.new("RGB", (tw + bar.width, th + 40), "white")
    page.paste(comp, (0, 40))
    page.paste(bar, (tw, 0))
    font = ImageFont.load_default(size=15)
    ImageDraw.Draw(page).text((10, 10), f"{title}: tumour probability (outlines: regions)", (0, 0, 0), font)
    page.save(out / "overlay.png")
