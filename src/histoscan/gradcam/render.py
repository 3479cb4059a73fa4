"""The one Grad-CAM renderer: the heat-map blend, the figure `histoscan explain` writes, the web page's panel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_PX = (
    256  # overlays are upscaled by an integer factor to at least this side, so 50-96 px patches are visible
)
LABELS = ("normal", "tumour")
HEAT_ALPHA = 0.45


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: bitmap font, fixed size
        return ImageFont.load_default()


def _heat_rgb(cam: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps  # the colormap only; no pyplot state

    return (colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def _wrap(text: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> list[str]:
    """`text` broken at spaces into lines of at most `width` pixels."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, cur = [], ""
    for word in text.split(" "):
        cand = f"{cur} {word}" if cur else word
        if cur and draw.textlength(cand, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    return [*lines, cur]


def render_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    probability: float,
    threshold: float,
    title: str,
    notes: Sequence[str] = (),
) -> Image.Image:
    """Side-by-side figure: the patch and its Grad-CAM overlay, upscaled, with prediction and colour bar.

    Args:
        image: uint8 H x W x 3 patch as the model saw it.
        cam: float H x W map in [0, 1].
        probability: tumour probability.
        threshold: decision threshold of the run.
        title: first caption line (usually the image id).
        notes: further caption lines, wrapped to the figure's width (e.g. how the input was fitted to the
            model's size, domain warnings); a line starting "warning:" is red.

    Returns:
        An RGB PIL image.
    """
    patch, overlay = _blend(image, cam, PANEL_PX)
    size = patch.size

    pad, font, small = 8, _font(14), _font(11)
    label = LABELS[int(probability >= threshold)]
    lines = [
        (title, "black"),
        (f"P(tumour) = {probability:.3f}   predicted: {label} (threshold {threshold:.3g})", "black"),
    ]
    width = 2 * size[0] + 3 * pad
    for note in notes:
        colour = (180, 0, 0) if note.startswith("warning:") else (60, 60, 60)
        lines += [(part, colour) for part in _wrap(note, width - 2 * pad, small)]
    text_h = 2 * 18 + 15 * (len(lines) - 2)  # title and prediction, then the smaller note lines
    bar_h = 10
    canvas = Image.new("RGB", (width, text_h + size[1] + bar_h + 22 + 3 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for i, (line, colour) in enumerate(lines):
        draw.text((pad, y), line, fill=colour, font=font if i < 2 else small)
        y += 18 if i < 2 else 15
    top = 2 * pad + text_h
    canvas.paste(patch, (pad, top))
    canvas.paste(overlay, (2 * pad + size[0], top))
    draw.text((pad, top + size[1] + 2), "patch as the model saw it", fill="black", font=small)
    # colour bar under the overlay: what the heat colours mean
    bar_top = top + size[1] + pad + 6
    ramp = _heat_rgb(np.linspace(0.0, 1.0, size[0])[None, :].repeat(bar_h, 0))
    canvas.paste(Image.fromarray(ramp), (2 * pad + size[0], bar_top))
    draw.text(
        (2 * pad + size[0], bar_top + bar_h + 1), f"Grad-CAM for '{label}': 0", fill="black", font=small
    )
    draw.text((2 * pad + 2 * size[0] - 8, bar_top + bar_h + 1), "1", fill="black", font=small)
    return canvas


def overlay_panel(image: np.ndarray, cam: np.ndarray, min_side: int = PANEL_PX) -> Image.Image:
    """The patch (nearest-upscaled by an integer factor to at least `min_side`) blended with its map (jet)."""
    return _blend(image, cam, min_side)[1]


def _blend(image: np.ndarray, cam: np.ndarray, min_side: int) -> tuple[Image.Image, Image.Image]:
    """(upscaled patch, patch blended with the upscaled heat map), both at the same integer scale."""
    h, w = image.shape[:2]
    scale = max(1, -(-min_side // max(h, w)))
    size = (w * scale, h * scale)
    patch = Image.fromarray(image).resize(size, Image.Resampling.NEAREST)  # nearest: show the real pixels
    cam_big = np.asarray(
        Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    )
    return patch, Image.blend(patch, Image.fromarray(_heat_rgb(cam_big)), HEAT_ALPHA)
