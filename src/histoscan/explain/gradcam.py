"""`histoscan explain`: Grad-CAM overlays and probabilities for image files (the maps: :mod:`histoscan.gradcam`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoscan.gradcam.images import explain_images, require_torch
from histoscan.inference.predictor import TorchPredictor
from histoscan.utils.fs import staged_folder


def fit_note(height: int, width: int, size: int, fit: str, conversion: str | None = None) -> str | None:
    """What the model saw of an image of `height` x `width` px fitted to `size` (None: the image itself)."""
    parts = []
    if (height, width) != (size, size):
        if fit == "resize":
            parts.append(
                f"the model saw this {width}x{height} px image resized to {size}x{size} px (fit: resize)"
            )
        elif height >= size and width >= size:
            parts.append(
                f"the model saw only the centre {size}x{size} px crop of this {width}x{height} px image (fit: pad)"
            )
        elif height <= size and width <= size:
            parts.append(f"this {width}x{height} px image was reflect-padded to the model's {size}x{size} px")
        else:
            parts.append(
                f"this {width}x{height} px image was centre-cropped and reflect-padded to the model's "
                f"{size}x{size} px"
            )
    if conversion:
        parts.append(f"converted on reading ({conversion})")
    return "; ".join(parts) or None


def explain_files(
    model: str | Path,
    files: list[Path],
    out: str | Path,
    target_layer: str | None = None,
    device: str = "auto",
    force: bool = False,
) -> tuple[list[Path], TorchPredictor, list[str]]:
    """`histoscan explain`: decode and fit image files as in training, explain them into `out` (all or nothing).

    Each figure's caption says when the model saw a crop, padding or resize of the file (e.g. the centre
    50 x 50 px of a 96 x 96 px upload) rather than the file itself; a colour far from the training patches'
    (:mod:`histoscan.stain.domain`) is a warning on every figure.

    Returns:
        (overlay paths in `out`, the predictor used, warning lines).
    """
    from histoscan.data.images import decode_image, fit_image  # lazy: image codecs
    from histoscan.inference.predictor import load_predictor
    from histoscan.stain.domain import domain_warnings

    predictor = require_torch(load_predictor(model, "auto", device))  # an .onnx: the Grad-CAM message
    card = predictor.card
    fitted, notes = [], []
    for f in files:
        img, conversion = decode_image(f, str(f))
        note = fit_note(img.shape[0], img.shape[1], card.image_size, card.fit, conversion)
        notes.append([note] if note else None)
        fitted.append(fit_image(img, card.image_size, card.fit))
    images = np.stack(fitted)
    warnings, _ = domain_warnings(predictor, None, images, what="images")
    ids = _unique_ids(files)
    dest = Path(out)
    with staged_folder(dest, force) as tmp:
        paths = explain_images(
            predictor, images, ids, tmp, target_layer=target_layer, notes=notes, warnings=warnings
        )
    return [dest / p.name for p in paths], predictor, warnings


def _unique_ids(files: list[Path]) -> list[str]:
    """File stems, with the parent folder prepended where stems repeat."""
    stems = [f.stem for f in files]
    return [f"{f.parent.name}_{f.stem}" if stems.count(f.stem) > 1 else f.stem for f in files]
