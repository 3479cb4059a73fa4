"""Whole-slide tumour maps: tissue mask, tiles at the model's µm/px streamed through it, heatmap, regions."""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from histoscan.errors import HistoscanInputError
from histoscan.folders import SlideDir
from histoscan.inference.predictor import Predictor
from histoscan.slide.io import SlideReader, open_slide, tumour_regions
from histoscan.slide.render import write_heatmap, write_overlay
from histoscan.slide.tiles import (
    OUTPUTS,
    SlideOptions,
    TileGrid,
    average_tiles,
    default_stride,
    plan_grid,
    read_tile,
    smooth_heat,
    stream_tiles,
    tile_tissue_fraction,
    tiles_covering,
)
from histoscan.stain.domain import domain_warnings, patch_colours, sample_rows
from histoscan.stain.tissue import thumbnail_tissue_mask
from histoscan.utils.fs import guard_output, staged_folder

__all__ = [  # the tiling names are re-exported from histoscan.slide.tiles
    "OUTPUTS",
    "SlideOptions",
    "TileGrid",
    "map_slide",
    "plan_grid",
    "read_tile",
    "stream_tiles",
    "tile_tissue_fraction",
]

log = logging.getLogger(__name__)


def map_slide(
    predictor: Predictor,
    slide: str | Path,
    out: str | Path,
    options: SlideOptions | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    truth: str | Path | None = None,
) -> dict:
    """Map a whole slide to tumour probabilities and write heatmap, overlay, tiles, regions and summary.

    Args:
        predictor: the model (image size, patch µm/px and threshold come from its card).
        slide: any OpenSlide format, or a plain/pyramidal TIFF.
        out: output folder (must be empty unless `options.force`); written in full or not at all.
        options: see :class:`SlideOptions`.
        progress: show a tqdm bar on stderr (on a terminal).
        echo: receives one start line (slide size, µm/px, level, tiles, model) before the tiles are read.
        truth: the slide's outlines (ASAP XML or QuPath GeoJSON, slide/annotations.py): the map is scored
            against them (tile AUC, Dice, FROC; truth.json and summary["truth"]) and they are drawn on the overlay.

    Returns:
        The summary written to summary.json.
    """
    opts = options or SlideOptions()
    if opts.explain:
        predictor.require_explainable()  # an ONNX model: said before the slide is read, not after
    guard_output(out, opts.force, "folder", "--out")
    reader = open_slide(slide, opts.mpp, opts.reader)
    try:
        with staged_folder(out, opts.force) as tmp:
            return _map(predictor, reader, slide, tmp, opts, progress, echo, truth)
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
    truth: str | Path | None = None,
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
    stride = opts.stride or default_stride(card.image_size)
    grid = plan_grid(reader, card.image_size, float(model_mpp), stride, opts.level)
    cells = grid.cells()  # the heatmap's grid (the tile grid when the tiles do not overlap)
    out.mkdir(parents=True, exist_ok=True)
    side = min(max(opts.thumbnail_size, math.ceil(8 * max(reader.dimensions) / grid.tile0)), 4096)
    thumb = reader.thumbnail(side)
    w0, h0 = reader.dimensions
    mask = thumbnail_tissue_mask(thumb)
    t_tiles = time.perf_counter()
    cell_frac = tile_tissue_fraction(mask, cells, reader.dimensions)
    tissue = cell_frac >= opts.min_tissue
    rc = np.argwhere(tiles_covering(tissue, grid))  # every tile over a tissue cell: all cover it equally
    frac = tile_tissue_fraction(mask, grid, reader.dimensions)
    xy = grid.origins(rc)
    if echo is not None:
        step = f" every {grid.stride0:.0f}" if grid.stride0 != grid.tile0 else ""
        echo(
            f"slide: {Path(slide).name} {w0}x{h0} px at {reader.mpp:g} µm/px ({reader.mpp_source}); level "
            f"{grid.level} (downsample {grid.downsample:g}), tiles of {grid.tile0:.0f} level-0 px{step} for "
            f"{card.model} at {float(model_mpp):g} µm/px; {len(rc)} tissue tiles of {grid.rows * grid.cols}"
        )
    probs = np.empty(len(rc), np.float32)
    sampled, colours = sample_rows(len(rc)), []  # colour summaries of up to 2,000 tiles for the domain check
    with tqdm(
        total=len(rc), unit="tile", file=sys.stderr, disable=None if progress else True, desc=Path(slide).name
    ) as bar:
        for start, batch in stream_tiles(reader, grid, xy, opts.batch_size, opts.read_threads, opts.prefetch):
            probs[start : start + len(batch)] = predictor.predict_proba(batch, opts.batch_size)
            pick = sampled[(sampled >= start) & (sampled < start + len(batch))] - start
            colours.append(patch_colours(batch, pick))
            bar.update(len(batch))
    stain_line = predictor.stain_note("tissue tiles")
    t_regions = time.perf_counter()
    heat = average_tiles(probs, rc, grid)
    heat[~tissue] = np.nan
    heat = smooth_heat(heat, opts.smooth * grid.tile0 / grid.stride0)
    threshold = float(card.threshold if opts.threshold is None else opts.threshold)
    called = np.nan_to_num(heat, nan=-1.0) >= threshold
    threshold_source = card.threshold_source if opts.threshold is None else "--threshold"
    regions = tumour_regions(heat, threshold, cells.stride0, cells.cell_offset, reader.mpp)
    level_mpp = reader.mpp * grid.downsample
    # the tiles hold the detail of the level read, or of the model's µm/px when that is coarser (resampled)
    tile_mpp = max(level_mpp, float(model_mpp))
    warnings, colour_distance = domain_warnings(
        predictor,
        tile_mpp,
        colours=np.concatenate(colours) if colours else None,
        what="tiles",
        model_mpp=model_mpp,
    )
    explained, explain_note = (
        _explain(predictor, reader, grid, xy, probs, threshold, opts.explain, out, warnings)
        if opts.explain
        else ([], None)
    )
    cell_mm2 = (cells.stride0 * reader.mpp / 1000.0) ** 2
    n_tumour = int(called.sum())
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
        "level_mpp": level_mpp,
        "tile_mpp": tile_mpp,
        "tile_size_px": grid.image_size,
        "tile_size_level0": grid.tile0,
        "stride": stride,
        "stride_level0": grid.stride0,
        "read_size": grid.read_size,
        "grid": [grid.rows, grid.cols],
        # heatmap.npy / regions: cells of cell_size_level0 px from the slide's corner, each the mean of the
        # tiles_per_cell tiles covering it (the tiles themselves when stride = tile size), then smoothed
        "heatmap_grid": [cells.rows, cells.cols],
        "cell_size_level0": cells.stride0,
        "tiles_per_cell": grid.cover**2,
        "smooth": opts.smooth,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "min_tissue": opts.min_tissue,
        "n_tiles": grid.rows * grid.cols,
        "n_tissue_tiles": len(rc),
        "n_tissue_cells": int(tissue.sum()),
        "n_tumour_tiles": n_tumour,  # heatmap cells called tumour (= tiles when stride = tile size)
        "n_regions": len(regions["features"]),
        "tissue_area_mm2": float(mask.sum() * (w0 / mask.shape[1]) * (h0 / mask.shape[0]))
        * (reader.mpp / 1000.0) ** 2,
        # tissue inside the tumour cells (comparable with tissue_area_mm2); the polygons' area is larger
        # because a cell counts whole in regions.geojson
        "tumour_area_mm2": float(cell_frac[called].sum() * cell_mm2),
        "tumour_region_area_mm2": n_tumour * cell_mm2,
        "max_probability": float(np.nanmax(heat)) if len(probs) else None,
        "explained": [str(p.relative_to(out)) for p in explained],
        "notes": list(reader.notes) + ([stain_line] if stain_line else []),
        "warnings": warnings,
        "colour_distance": colour_distance,
        "options": asdict(opts),
    }
    if not len(rc):
        summary["notes"].append("no tissue found: no tile reached --min-tissue; outputs are empty")
    if grid.tile0 < grid.image_size and not any(w.startswith("resolution") for w in warnings):
        summary["notes"].append("the model's µm/px is finer than the slide's: tiles are upsampled")
    if explain_note:
        summary["notes"].append(explain_note)
    outline = None
    folder = SlideDir(out)
    if truth is not None:
        outline, summary["truth"] = _score_truth(folder, truth, reader.dimensions, heat, threshold, cells, opts,
                                                 cell_mm2)  # fmt: skip
    t_write = time.perf_counter()
    caption = caption_lines(Path(slide).name, summary)
    write_heatmap(folder.heatmap_png, heat, threshold, caption)
    bar = write_overlay(folder.overlay, heat, thumb, reader.dimensions, cells, regions, threshold,
                        reader.mpp, caption, outline)  # fmt: skip
    summary["scale_bar"] = {"um": bar.um, "px": bar.px, "overlay_um_per_px": bar.um_per_px}
    summary["caption"] = caption
    _write_tiles(folder.tiles, rc, xy, probs, frac)
    folder.write_regions(regions)
    np.save(folder.heatmap, heat)
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
    folder.write_summary(summary)
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
    warnings: list[str],
) -> tuple[list[Path], str | None]:
    """Grad-CAM of the k most probable tumour tiles into out/explain/; when no tile reached the threshold, of
    the k most probable tiles anyway, their ids ending `_below-threshold` (and a note saying so)."""
    try:
        from histoscan.gradcam.images import explain_images  # lazy: only with --explain
    except ImportError as e:
        raise HistoscanInputError(f"--explain: histoscan.gradcam is not available ({e})") from None
    top = np.argsort(-probs, kind="stable")[:k]
    order = [i for i in top if probs[i] >= threshold]
    if order or not len(top):
        ids = [f"tile_x{xy[i][0]}_y{xy[i][1]}" for i in order]
        notes, note = None, None
    else:
        order = list(top)
        ids = [f"tile_x{xy[i][0]}_y{xy[i][1]}_below-threshold" for i in order]
        note = (
            f"no tile reached the threshold {threshold:.3g}; explained the {len(order)} most probable tiles "
            "(below threshold)"
        )
        notes = [[f"below the threshold {threshold:.3g}: no tile reached it; one of the most probable tiles"]]
        notes *= len(order)
    if not order:
        return [], None
    images = np.stack([read_tile(reader, grid, *xy[i]) for i in order])
    return list(
        explain_images(
            predictor, images, ids, SlideDir(out).explain, notes=notes, warnings=warnings, threshold=threshold
        )
    ), note


def _score_truth(
    folder: SlideDir,
    truth: str | Path,
    dimensions: tuple[int, int],
    heat: np.ndarray,
    threshold: float,
    cells: TileGrid,
    opts: SlideOptions,
    cell_mm2: float,
) -> tuple[list[list[tuple[float, float]]], dict]:
    """Score the map against the slide's outlines: truth.json (with the per-threshold detections a cohort pools)
    and the summary's compact "truth"; returns the tumour outline rings (level-0) to draw on the overlay."""
    from histoscan.slide.annotations import parse_label_map, read_annotations  # lazy: shapely
    from histoscan.slide.truth import score_slide

    ann = read_annotations(truth, dimensions, parse_label_map(opts.label_map))
    scores = score_slide(heat, threshold, ann, cells.stride0, cells.cell_offset, cell_mm2)
    folder.write_truth({**scores, "annotations": ann.summary()})
    rings = [list(ring.coords) for poly in ann.lesions() for ring in (poly.exterior, *poly.interiors)]
    short = {k: scores[k] for k in ("tile_auc", "dice", "lesions", "tumour_cells", "true_mm2")}
    return rings, {**short, "froc": scores["froc"]["score"], "annotations": str(truth),
                   "warnings": dict(ann.warnings)}  # fmt: skip


def _write_tiles(path: Path, rc: np.ndarray, xy: np.ndarray, probs: np.ndarray, frac: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "probability", "row", "col", "tissue_fraction"])
        for (r, c), (x, y), p in zip(rc, xy, probs, strict=True):
            w.writerow([int(x), int(y), f"{p:.6f}", int(r), int(c), f"{frac[r, c]:.3f}"])


def caption_lines(name: str, s: dict) -> list[str]:
    """The caption of heatmap.png and overlay.png: what was mapped, at which level and µm/px, the threshold
    and where it came from, then one `warning: ...` line per domain warning."""
    return [
        f"{name}: tumour probability; outlines: called regions (probability >= {s['threshold']:.3g})"
        + ("; blue: the annotated tumour" if s.get("truth") else ""),
        f"level {s['level']} read at {s['level_mpp']:.3g} µm/px (slide {s['slide_mpp']:.3g} µm/px, "
        f"{s['slide_mpp_source']}); model {s['model']} at {s['model_mpp']:g} µm/px; threshold "
        f"{s['threshold']:.3g} ({s['threshold_source']})",
        *(f"warning: {w}" for w in s["warnings"]),
    ]
