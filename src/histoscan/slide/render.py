"""Slide pictures: colours anchored at the threshold, heatmap.png with its legend, overlay.png with scale bar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

if TYPE_CHECKING:
    from matplotlib.colors import TwoSlopeNorm

    from histoscan.slide.tiles import TileGrid

CMAP = "RdYlBu_r"  # diverging: blue below the threshold, yellow at it, red above
OVERLAY_ALPHA = 115  # 45 % opacity of the colours over the slide
NO_TISSUE = (224, 224, 224)  # heatmap.png cells that were not classified
SCALE_STEPS_UM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
BAR_PX = 215  # width of the colour-bar legend

TRUTH_RGB = (0, 90, 255)  # annotated tumour outlines on the overlay (apart from the probability colours)

@dataclass(frozen=True)
class ScaleBar:
    """A scale bar of a round length: `um` micrometres drawn as exactly `px` pixels."""

    um: float
    px: int
    um_per_px: float

    @property
    def label(self) -> str:
        return f"{self.um / 1000:g} mm" if self.um >= 1000 else f"{self.um:g} µm"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's data (it has µ, which Pillow's default font lacks), else the default."""
    import matplotlib

    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (OSError, ImportError):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow without FreeType: the bitmap font
            return ImageFont.load_default()


def colour_norm(threshold: float) -> TwoSlopeNorm:
    """Probability -> [0, 1] colour position, piecewise linear with the threshold at the midpoint 0.5."""
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vmin=0.0, vcenter=min(max(float(threshold), 1e-3), 1 - 1e-3), vmax=1.0)


def probability_rgba(heat: np.ndarray, threshold: float) -> np.ndarray:
    """The one probability colouring of heatmap.png and overlay.png: uint8 (..., 4), NaN transparent.

    A probability equal to the threshold gets the colour map's midpoint colour (pale yellow); called tiles
    run from yellow to red, the others from yellow to blue.
    """
    from matplotlib import colormaps

    pos = colour_norm(threshold)(np.nan_to_num(heat, nan=0.0).astype(np.float64))
    rgba = colormaps[CMAP](np.asarray(pos), bytes=True)
    rgba[np.isnan(heat)] = 0
    return rgba


def scale_bar(um_per_px: float, width_px: int, most: float = 0.25) -> ScaleBar:
    """The longest round length (1-2-5 steps, 10 µm .. 50 mm) at most `most` of `width_px`; with steps at
    most 2.5x apart it is at least 10 % of the width (when the picture spans 100 µm .. 200 mm).

    Args:
        um_per_px: micrometres per picture pixel.
        width_px: the picture's width.
    """
    fits = [um for um in SCALE_STEPS_UM if um / um_per_px <= most * width_px]
    um = fits[-1] if fits else SCALE_STEPS_UM[0]
    return ScaleBar(float(um), max(1, round(um / um_per_px)), float(um_per_px))


def draw_scale_bar(img: Image.Image, bar: ScaleBar, margin: int = 10) -> tuple[int, int, int, int]:
    """Draw `bar` (black, exactly `bar.px` wide) with its label on a white box at the bottom left of `img`.

    Returns:
        The bar's pixel box (x0, y0, x1, y1), inclusive.
    """
    draw = ImageDraw.Draw(img)
    font = _font(max(11, min(18, img.width // 60)))
    thick = max(3, img.width // 250)
    text_w = int(draw.textlength(bar.label, font=font))
    text_h = font.size if hasattr(font, "size") else 11
    pad = 5
    box_w = max(bar.px, text_w) + 2 * pad
    box_h = text_h + thick + 3 * pad
    x0, y1 = margin, img.height - margin
    draw.rectangle((x0, y1 - box_h, x0 + box_w, y1), fill=(255, 255, 255))
    bx0, by1 = x0 + pad, y1 - pad
    draw.rectangle((bx0, by1 - thick + 1, bx0 + bar.px - 1, by1), fill=(0, 0, 0))
    draw.text((bx0, y1 - box_h + pad), bar.label, fill=(0, 0, 0), font=font)
    return bx0, by1 - thick + 1, bx0 + bar.px - 1, by1


def colour_bar(threshold: float, height: int) -> Image.Image:
    """The legend: the colour map as a bar (equal length below and above the threshold), the threshold marked
    by a line and the tick "threshold t". Only this small figure goes through matplotlib. A threshold outside
    0..1 (a hand-edited threshold.json) is marked at the nearer end of the bar, labelled with its value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure  # no pyplot: no global state, and faster to import

    norm = colour_norm(threshold)
    fig = Figure(figsize=(BAR_PX / 100, max(height, 240) / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    cax = fig.add_axes((0.24, 0.05, 0.1, 0.9))
    cb = fig.colorbar(ScalarMappable(norm, CMAP), cax=cax)
    t = min(max(float(threshold), 0.0), 1.0)  # the mark stays on the bar (outside it: a singular transform)
    ticks = [v for v in (0.0, 0.25, 0.5, 0.75, 1.0) if abs(float(norm(v)) - float(norm(t))) > 0.07]
    cb.set_ticks([*ticks, t], labels=[f"{v:g}" for v in ticks] + [f"threshold {float(threshold):.3g}"])
    cax.axhline(t, color="black", linewidth=2.5)
    cax.yaxis.set_label_position("left")
    cb.set_label("tumour probability")
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])


def _wrap(lines: list[str], width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> list[str]:
    """Lines broken at spaces so that each fits `width` pixels."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    out = []
    for line in lines:
        words, cur = line.split(" "), ""
        for w in words:
            cand = f"{cur} {w}" if cur else w
            if cur and draw.textlength(cand, font=font) > width:
                out.append(cur)
                cur = "    " + w
            else:
                cur = cand
        out.append(cur)
    return out


def _page(
    body: Image.Image, legend: Image.Image, caption: list[str]
) -> tuple[Image.Image, ImageDraw.ImageDraw, int]:
    """A white page: caption lines on top (warnings in red), `body` below at the left, `legend` at the right."""
    font = _font(14)
    width = body.width + legend.width
    lines = _wrap(caption, width - 20, font)
    top = 10 + 20 * len(lines)
    page = Image.new("RGB", (width, max(body.height, legend.height) + top), "white")
    page.paste(body, (0, top))
    page.paste(legend, (body.width, top))
    draw = ImageDraw.Draw(page)
    red = False
    for i, line in enumerate(lines):
        red = line.startswith("warning:") or (red and line.startswith("    "))
        draw.text((10, 6 + 20 * i), line, fill=(180, 0, 0) if red else (0, 0, 0), font=font)
    return page


def _save(page: Image.Image, path: Path, caption: list[str]) -> None:
    info = PngInfo()
    info.add_itxt("Description", "\n".join(caption))
    page.save(path, pnginfo=info)


def write_heatmap(path: Path, heat: np.ndarray, threshold: float, caption: list[str]) -> None:
    """heatmap.png: one block per tile (grey where there is no tissue), the colour bar and a "no tissue" swatch."""
    rgba = probability_rgba(heat, threshold)
    rgb = np.where(rgba[..., 3:] > 0, rgba[..., :3], np.array(NO_TISSUE, np.uint8))
    scale = max(1, 1024 // max(heat.shape))
    body = Image.fromarray(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))
    bar = colour_bar(threshold, max(body.height, 240) - 40)
    legend = Image.new("RGB", (bar.width, bar.height + 40), "white")
    legend.paste(bar, (0, 0))
    draw = ImageDraw.Draw(legend)
    x = round(0.24 * bar.width)
    draw.rectangle((x, bar.height + 10, x + 22, bar.height + 28), fill=NO_TISSUE, outline=(120, 120, 120))
    draw.text((x + 28, bar.height + 11), "no tissue", fill=(0, 0, 0), font=_font(13))
    page = _page(body, legend, caption)
    _save(page, path, caption)


def write_overlay(
    path: Path,
    heat: np.ndarray,
    thumb: np.ndarray,
    dims: tuple[int, int],
    grid: TileGrid,
    regions: dict,
    threshold: float,
    slide_mpp: float,
    caption: list[str],
    truth: list[list[tuple[float, float]]] | None = None,
) -> ScaleBar:
    """overlay.png: the colours over the thumbnail, region outlines, a scale bar, the colour bar and a caption;
    `truth` (level-0 rings of annotated tumour) drawn in blue over them.

    Composed at thumbnail resolution with PIL in uint8 (a few thumbnail-sized buffers, no float64 copies:
    flat memory on big slides); matplotlib draws only the colour bar.

    Returns:
        The scale bar drawn.
    """
    rgba = probability_rgba(heat, threshold)
    th, tw = thumb.shape[:2]
    sx, sy = dims[0] / tw, dims[1] / th
    cols = np.floor(((np.arange(tw) + 0.5) * sx - grid.cell_offset) / grid.stride0).astype(int)
    rows = np.floor(((np.arange(th) + 0.5) * sy - grid.cell_offset) / grid.stride0).astype(int)
    inside = (rows[:, None] >= 0) & (rows[:, None] < grid.rows) & (cols[None] >= 0) & (cols[None] < grid.cols)
    cell = rgba[np.clip(rows, 0, grid.rows - 1)][:, np.clip(cols, 0, grid.cols - 1)]
    alpha = Image.fromarray(np.where(inside & (cell[..., 3] > 0), OVERLAY_ALPHA, 0).astype(np.uint8))
    comp = Image.composite(
        Image.fromarray(np.ascontiguousarray(cell[..., :3])), Image.fromarray(thumb), alpha
    )
    del cell
    draw = ImageDraw.Draw(comp)
    for feat in regions["features"]:
        for ring in feat["geometry"]["coordinates"]:
            draw.line([(x / sx, y / sy) for x, y in ring], fill=(0, 0, 0), width=max(1, round(tw / 600)))
    for ring in truth or ():
        draw.line([(x / sx, y / sy) for x, y in ring], fill=TRUTH_RGB, width=max(2, round(tw / 400)))
    bar = scale_bar(sx * slide_mpp, tw)
    draw_scale_bar(comp, bar)
    page = _page(comp, colour_bar(threshold, th), caption)
    _save(page, path, caption)
    return bar
