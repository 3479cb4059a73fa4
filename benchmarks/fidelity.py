"""Saliency-map fidelity: the pointing game on tumour/normal composites and deletion/insertion curves.

Benchmark code (benchmarks/bench_gradcam.py; tests/explain/test_fidelity.py), not part of the installed package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from histoscan.errors import HistoscanInputError

ScoreFn = Callable[[np.ndarray], np.ndarray]  # uint8 N x H x W x 3 -> tumour probability N


def _check_pair(tumour: np.ndarray, normal: np.ndarray) -> tuple[int, int]:
    if tumour.ndim != 4 or tumour.shape[1:] != normal.shape[1:] or tumour.shape[1] != tumour.shape[2]:
        raise HistoscanInputError(
            f"composites: tumour {tumour.shape} and normal {normal.shape} must both be N x S x S x 3"
        )
    if not len(tumour) or not len(normal):
        raise HistoscanInputError("composites: need at least one tumour and one normal patch")
    return tumour.shape[1], min(len(tumour), len(normal))


def quadrant_composites(
    tumour: np.ndarray, normal: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Normal patches with the centre (S/2 x S/2) of a tumour patch pasted into one random quadrant.

    Args:
        tumour: uint8 N x S x S x 3 tumour patches (tumour in the centre, as PCam labels it).
        normal: uint8 M x S x S x 3 normal patches; pairs are (tumour[i], normal[i]) for i < min(N, M).
        rng: chooses the quadrant.

    Returns:
        (composites uint8 K x S x S x 3, tumour masks bool K x S x S); the tumour part covers 1/4 of the area.
    """
    size, k = _check_pair(tumour, normal)
    half, lo = size // 2, (size - size // 2) // 2
    images = normal[:k].copy()
    masks = np.zeros((k, size, size), bool)
    for i, q in enumerate(rng.integers(0, 4, k)):
        r, c = (q // 2) * (size - half), (q % 2) * (size - half)
        images[i, r : r + half, c : c + half] = tumour[i, lo : lo + half, lo : lo + half]
        masks[i, r : r + half, c : c + half] = True
    return images, masks


def centre_composites(tumour: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normal patches with the centre S/2 x S/2 of a tumour patch in their centre (touching no border).

    A map biased towards the borders or corners (zero padding, partial pooling windows) fails this test while
    it can still pass the quadrant and halves tests, whose tumour parts always include corners.

    Returns:
        (composites uint8 K x S x S x 3, tumour masks bool K x S x S); the tumour part covers ~1/4 of the area.
    """
    size, k = _check_pair(tumour, normal)
    half, lo = size // 2, (size - size // 2) // 2
    images = normal[:k].copy()
    images[:, lo : lo + half, lo : lo + half] = tumour[:k, lo : lo + half, lo : lo + half]
    masks = np.zeros((k, size, size), bool)
    masks[:, lo : lo + half, lo : lo + half] = True
    return images, masks


def half_composites(
    tumour: np.ndarray, normal: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A tumour patch's half (left, right, top or bottom, chosen at random) in place over a normal patch.

    Returns:
        (composites uint8 K x S x S x 3, tumour masks bool K x S x S); the tumour part covers 1/2 of the area.
    """
    size, k = _check_pair(tumour, normal)
    half = size // 2
    images = normal[:k].copy()
    masks = np.zeros((k, size, size), bool)
    for i, side in enumerate(rng.integers(0, 4, k)):
        part = [
            (slice(None), slice(0, half)),
            (slice(None), slice(half, None)),
            (slice(0, half), slice(None)),
            (slice(half, None), slice(None)),
        ][side]
        images[(i, *part)] = tumour[(i, *part)]
        masks[(i, *part)] = True
    return images, masks


def wilson_ci(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a binomial proportion (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Pointing:
    """Pointing-game result: `hits` of `n` maps peak inside the tumour part; `chance` = its mean area share."""

    hits: int
    n: int
    chance: float
    ci95: tuple[float, float]

    @property
    def rate(self) -> float:
        """hits / n (nan when n is 0)."""
        return self.hits / self.n if self.n else float("nan")

    @property
    def above_chance(self) -> bool:
        """The 95 % interval lies wholly above chance."""
        return self.n > 0 and self.ci95[0] > self.chance


def peak_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per map: its argmax lies inside the mask. A constant map (no peak, e.g. all zero) is a miss."""
    if maps.shape != masks.shape:
        raise HistoscanInputError(f"pointing: maps {maps.shape} and masks {masks.shape} differ in shape")
    flat = maps.reshape(len(maps), -1)
    peak = flat.argmax(1)
    has_peak = flat.max(1) > flat.min(1)
    return has_peak & masks.reshape(len(masks), -1)[np.arange(len(maps)), peak]


def pointing_game(maps: np.ndarray, masks: np.ndarray, selected: np.ndarray | None = None) -> Pointing:
    """Share of maps whose peak lies in the tumour part, among `selected` (e.g. tumour-predicted) ones.

    Args:
        maps: float N x H x W saliency maps at the input's size.
        masks: bool N x H x W tumour parts.
        selected: bool N, which composites count (default all).

    Returns:
        Hits, n, chance (mean area share of the masks counted) and the Wilson 95 % interval.
    """
    sel = np.ones(len(maps), bool) if selected is None else np.asarray(selected, bool)
    hits = peak_hits(maps, masks)[sel]
    chance = float(masks[sel].mean()) if sel.any() else float("nan")
    return Pointing(int(hits.sum()), int(sel.sum()), chance, wilson_ci(int(hits.sum()), int(sel.sum())))


def blurred(images: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Gaussian-blurred copies (sigma default S/10 px): the 'removed information' baseline."""
    from scipy.ndimage import gaussian_filter  # lazy: only the fidelity measurements

    s = images.shape[1] / 10 if sigma is None else sigma
    out = gaussian_filter(images.astype(np.float32), sigma=(0, s, s, 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves: probability per image (rows) after each step's share of pixels (cols)."""

    fractions: np.ndarray  # float K+1 in [0, 1]
    deletion: np.ndarray  # float N x (K+1): most salient pixels replaced by the baseline first
    insertion: np.ndarray  # float N x (K+1): most salient pixels revealed on the baseline first

    @property
    def deletion_aucs(self) -> np.ndarray:
        """Area under each image's deletion curve (lower: the map found what the score depends on)."""
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_aucs(self) -> np.ndarray:
        """Area under each image's insertion curve (higher is better)."""
        return np.trapezoid(self.insertion, self.fractions, axis=1)

    @property
    def deletion_auc(self) -> float:
        """Mean area under the deletion curves."""
        return float(self.deletion_aucs.mean())

    @property
    def insertion_auc(self) -> float:
        """Mean area under the insertion curves."""
        return float(self.insertion_aucs.mean())


def paired_difference(a: np.ndarray, b: np.ndarray, z: float = 1.959964) -> tuple[float, float, float]:
    """Mean of a - b over paired values (e.g. per-image AUCs of two maps) with a normal 95 % interval."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    half = z * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("inf")
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def pixel_order(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per map, flat pixel indices from most to least salient; ties (e.g. zeros) in random order."""
    flat = maps.reshape(len(maps), -1)
    tie = rng.random(flat.shape)
    return np.stack([np.lexsort((t, -m)) for m, t in zip(flat, tie, strict=True)])


def smooth_random_maps(n: int, size: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """N random side x side maps bilinearly upsampled to size x size: the random-order control for
    deletion/insertion with the same blob size as a class-activation map of that resolution."""
    from PIL import Image  # lazy: only the fidelity measurements

    low = rng.random((n, side, side)).astype(np.float32)
    return np.stack(
        [np.asarray(Image.fromarray(m, mode="F").resize((size, size), Image.BILINEAR)) for m in low]
    )


def deletion_insertion(
    score: ScoreFn,
    images: np.ndarray,
    maps: np.ndarray,
    rng: np.random.Generator,
    step: float = 0.02,
    baseline: np.ndarray | None = None,
) -> Curves:
    """Deletion and insertion curves (Petsiuk et al. 2018, RISE) of `score` along each map's pixel order.

    Args:
        score: uint8 N x H x W x 3 -> tumour probability N (e.g. a predictor's `predict_proba`).
        images: uint8 N x H x W x 3.
        maps: float N x H x W saliency (pass random values for the random-order baseline).
        rng: breaks ties in the pixel order.
        step: share of the pixels changed per step (0.02: 51 points per curve).
        baseline: what deleted pixels become / insertion starts from (default :func:`blurred` images).

    Returns:
        The curves of every image.
    """
    images = np.asarray(images)
    if maps.shape != images.shape[:3]:
        raise HistoscanInputError(f"deletion: maps {maps.shape} do not match images {images.shape}")
    if not 0 < step <= 1:
        raise HistoscanInputError(f"deletion: step {step} must lie in (0, 1]")
    n, h, w = maps.shape
    base = blurred(images) if baseline is None else np.asarray(baseline)
    counts = np.unique(np.rint(np.arange(0.0, 1.0 + step / 2, step).clip(0, 1) * h * w).astype(int))
    if counts[-1] != h * w:
        counts = np.append(counts, h * w)
    order = pixel_order(maps, rng)
    dele = np.zeros((n, len(counts)), np.float32)
    ins = np.zeros((n, len(counts)), np.float32)
    for i in range(n):
        rank = np.empty(h * w, np.int64)
        rank[order[i]] = np.arange(h * w)
        # changed[j] is True for the pixels among the first counts[j] in the order
        changed = (rank[None, :] < counts[:, None]).reshape(len(counts), h, w, 1)
        img, bas = images[i][None], base[i][None]
        dele[i] = score(np.where(changed, bas, img))
        ins[i] = score(np.where(changed, img, bas))
    return Curves(counts / (h * w), dele, ins)
