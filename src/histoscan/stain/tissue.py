"""Tissue detection on slides: the region mask of a slide thumbnail (HSV saturation, Otsu, morphology).

Pixel-level tissue (stained pixels within a patch, by optical density) is :func:`histoscan.stain.ops.tissue_mask`;
both live in stain/, the colour code.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (hand-rolled: scikit-image is not a dependency)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * np.arange(256))
    total, mean_all = w0[-1], m0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between))


def thumbnail_tissue_mask(rgb: np.ndarray, min_sat: int = 15, max_sat: int = 20) -> np.ndarray:
    """Tissue regions of a slide thumbnail: Otsu on HSV saturation, then closing, opening and hole filling.

    Not :func:`histoscan.stain.ops.tissue_mask` (stained pixels by optical density, within a patch): a
    thumbnail pixel averages many cells and a slide's tissue region must include fat and holes, so this is a
    region rule (colourfulness, then shape); its bounds below were measured on slides, the OD rule's never were.

    The Otsu threshold is clamped to [min_sat, max_sat] (0..255) so that a blank slide finds no tissue and a
    crop that is all tissue is not split into stroma vs nuclei. The ceiling of 20 (glass is ~3-10) keeps
    pale tissue: on truth mosaics of PCam patches Otsu lands near 50, between pale and dark tissue, and a
    ceiling of 50 lost 6-15 % of the tissue cells (20: 0.4-1.8 %; benchmarks/bench_maps.py). Enclosed holes
    are filled: fat (white with thin membranes) is tissue, so a glass hole inside a section is too.
    """
    from scipy import ndimage  # lazy: keeps this module (and `histoscan slide --help`) light

    sat = np.asarray(Image.fromarray(rgb).convert("HSV"))[..., 1]
    sat = ndimage.median_filter(sat, 3)  # JPEG speckle; unlike a mean it does not grow tissue edges
    thr = min(max(otsu_threshold(sat), min_sat), max_sat)
    mask = sat > thr
    disk = ndimage.generate_binary_structure(2, 1)
    mask = ndimage.binary_closing(mask, disk, iterations=2, border_value=0)
    mask = ndimage.binary_opening(mask, disk, iterations=2, border_value=0)
    return ndimage.binary_fill_holes(mask)
