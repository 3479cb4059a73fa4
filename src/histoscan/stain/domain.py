"""Input vs the model's training domain: resolution (µm/px) and stain-colour checks, one warning line each.

Colour statistics live next to the stain code: the optical density and the stained-pixel rule are
:mod:`histoscan.stain.ops`'s (with io 256 and the "any channel" rule, see :func:`~histoscan.stain.ops.tissue_mask`).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch

from histoscan.errors import HistoscanInputError
from histoscan.stain.ops import od_table, tissue_mask

RESOLUTION_TOLERANCE = 1.25  # data and model µm/px may differ by this factor either way
COLOUR_LIMIT = 4.0  # Mahalanobis distance (per-patch SDs) of the data's mean colour from the training mean
MAX_PATCHES = 2000  # patches sampled for colour statistics (training) and checks (data)
OD_BETA = 0.15  # optical density below which, in every channel, a pixel is glass, not stain
MIN_TISSUE = 0.05  # a patch with less stained area has no colour to compare
COLOUR_METHOD = "od-share-v1"
FEATURES = ("od_red_share", "od_blue_share", "log_od_density")
COLUMNS = FEATURES + ("mean_r", "mean_g", "mean_b")  # patch_colours' columns; the RGB only for messages
OD_IO = 256.0  # the colour check's light level: only pure white has OD 0
_OD = od_table(OD_IO)  # uint8 -> optical density, one lookup


class Model(Protocol):
    """What the checks need of a model: its card (µm/px, stain) and its training-data record (data.json)."""

    card: Any

    def training_data(self) -> dict | None: ...


def check_resolution(data_mpp: float | None, model_mpp: float | None, what: str = "patches") -> str | None:
    """A warning when the data's µm/px differs from the model's by more than 25 % (|log ratio| > log 1.25).

    Args:
        data_mpp: µm/px of what the model is given (None: unknown, nothing to check).
        model_mpp: µm/px of the training patches (None: unknown).
        what: how the data is named in the message ("patches", "tiles").

    Returns:
        One line naming both values, or None when they agree (or one is unknown).
    """
    if not data_mpp or not model_mpp:
        return None
    ratio = float(data_mpp) / float(model_mpp)
    if abs(math.log(ratio)) <= math.log(RESOLUTION_TOLERANCE):
        return None
    how = f"{ratio:.2g}x coarser" if ratio > 1 else f"{1 / ratio:.2g}x finer"
    return (
        f"resolution: the {what} are at {float(data_mpp):g} µm/px but the model was trained at "
        f"{float(model_mpp):g} µm/px ({how}; more than 25 % off): tissue appears at a scale the model never "
        "saw, so its probabilities may be meaningless"
    )


def sample_rows(n: int, limit: int = MAX_PATCHES, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `limit` of `n` rows, drawn without replacement (all rows when n <= limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def patch_colours(images: Any, rows: np.ndarray | None = None, chunk: int = 256) -> np.ndarray:
    """Per-patch colour summary, float32 N x 6 (columns :data:`COLUMNS`); read `chunk` patches at a time.

    The first three columns are the features the check compares: the red and blue shares of the patch's total
    optical density (OD = -log((I + 1) / 256)) over its stained pixels (any channel OD > 0.15), i.e. the hue
    of the stain mix independent of how dark it is, and the log mean OD of those pixels (how dark). They are
    NaN for a patch with less than 5 % stained pixels (glass, fat). The last three are the mean R, G, B.

    Args:
        images: uint8 N x H x W x 3 (an array or a memmap).
        rows: indices into `images` to summarise (default: all).
        chunk: patches decoded into float32 at once (flat memory on big stores).
    """
    idx = np.arange(len(images)) if rows is None else np.asarray(rows)
    out = np.full((len(idx), len(COLUMNS)), np.nan, np.float32)
    for start in range(0, len(idx), chunk):
        part = np.asarray(images[idx[start : start + chunk]])
        if part.ndim != 4 or part.shape[-1] != 3 or part.dtype != np.uint8:
            raise HistoscanInputError(f"images: expected uint8 N x H x W x 3, got {part.dtype} {part.shape}")
        flat = part.reshape(len(part), -1, 3)
        od = _OD[flat]
        stained = tissue_mask(torch.from_numpy(od), OD_BETA, rule="any").numpy()
        count = stained.sum(1)
        total = np.einsum("npc,np->nc", od, stained.astype(np.float32))
        dens = total.sum(1)
        ok = count >= MIN_TISSUE * flat.shape[1]
        safe = np.maximum(dens, 1e-6)
        feats = np.stack(
            [total[:, 0] / safe, total[:, 2] / safe, np.log(np.maximum(dens / np.maximum(count, 1), 1e-3))], 1
        )
        feats[~ok] = np.nan
        out[start : start + len(part), :3] = feats
        out[start : start + len(part), 3:] = flat.mean(1, dtype=np.float32)
    return out


def colour_stats(
    images: Any, rows: np.ndarray | None = None, limit: int = MAX_PATCHES, seed: int = 0
) -> dict | None:
    """Colour statistics of training patches for data.json: mean, SD and covariance of the features.

    Args:
        images: uint8 N x H x W x 3 (e.g. a store's memmap).
        rows: the rows to describe (e.g. the train split); a sample of at most `limit` of them is used.
        limit: patches sampled.
        seed: sampling seed.

    Returns:
        {"method", "features", "n", "mean", "std", "cov", "rgb_mean", "rgb_std"}, or None when fewer than 10
        sampled patches have stained tissue (no meaningful spread).
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    cols = patch_colours(images, rows[sample_rows(len(rows), limit, seed)])
    feats = cols[~np.isnan(cols[:, :3]).any(1)]
    if len(feats) < 10:
        return None
    f = feats[:, :3].astype(np.float64)
    rgb = cols[:, 3:].astype(np.float64)
    r = lambda a: np.vectorize(lambda x: float(f"{x:.6g}"))(a).tolist()  # noqa: E731
    return {
        "method": COLOUR_METHOD,
        "features": list(FEATURES),
        "n": len(f),
        "mean": r(f.mean(0)),
        "std": r(f.std(0)),
        "cov": r(np.cov(f.T)),
        "rgb_mean": r(rgb.mean(0)),
        "rgb_std": r(rgb.std(0)),
    }


def colour_distance(colours: np.ndarray, stats: dict | None) -> float | None:
    """Mahalanobis distance of the mean feature vector of `colours` (patch_colours rows) from the training mean.

    The distance is in units of the training patches' own spread (per-patch covariance), so 4 means "the
    typical input patch looks like a 4-SD outlier of the training set". None when `stats` is missing or of
    another method, or no patch has stained tissue.
    """
    if not stats or stats.get("method") != COLOUR_METHOD:
        return None
    feats = np.asarray(colours, np.float64)[:, :3]
    feats = feats[~np.isnan(feats).any(1)]
    if not len(feats):
        return None
    try:
        mean = np.asarray(stats["mean"], np.float64)
        cov = np.asarray(stats["cov"], np.float64) + 1e-9 * np.eye(3)
        diff = feats.mean(0) - mean
        return float(math.sqrt(max(float(diff @ np.linalg.solve(cov, diff)), 0.0)))
    except (KeyError, ValueError, TypeError, np.linalg.LinAlgError):
        return None


def check_colour_features(colours: np.ndarray, stats: dict | None, what: str = "patches") -> str | None:
    """:func:`check_colour` on precomputed :func:`patch_colours` rows (e.g. gathered while streaming tiles)."""
    d = colour_distance(colours, stats)
    if d is None or d <= COLOUR_LIMIT:
        return None
    seen = np.asarray(colours, np.float64)[:, 3:].mean(0)
    train = stats.get("rgb_mean") or [float("nan")] * 3
    fmt = lambda v: ",".join(f"{x:.0f}" for x in v)  # noqa: E731
    return (
        f"colour: the {what}' stain colour lies {d:.1f} SD from the training patches' (limit {COLOUR_LIMIT:g}; "
        f"mean RGB {fmt(seen)} vs {fmt(train)} in training): stain, scanner or tissue differ from the training "
        "data, so the probabilities may be unreliable"
    )


def check_colour(
    images: Any, stats: dict | None, rows: np.ndarray | None = None, what: str = "patches"
) -> str | None:
    """A warning when the images' mean colour lies far outside the training patches' colour distribution.

    Rule: the Mahalanobis distance of the batch's mean feature vector (:func:`patch_colours`: red and blue
    shares of the optical density and log density over stained pixels) from the training mean, in the
    training patches' per-patch covariance, above :data:`COLOUR_LIMIT` (4). Why this rule: plain per-channel
    RGB means hardly separate greyscale from H&E (brightness varies far more between patches than hue), and
    the OD shares are strongly anti-correlated in H&E (-0.66 on idc-breast), so a per-channel 4-SD test also
    misses grey patches (2.6 SD on the worst channel) that the joint distance puts at 4.6. On idc-breast
    statistics (2,000 patches of 130 patients): other idc-breast patients 0.2, hcd-train lymph node 1.6,
    slide tiles of cmu-1/tcga-cr-7395 1.4-2.1, greyscale idc 4.6, blue-shifted idc 6.4. A batch mean beyond
    4 per-patch SDs is not chance: even a single in-domain patch lies that far about 1 time in 25.

    Args:
        images: uint8 N x H x W x 3 (a sample of at most 2,000 rows is read; see `rows`).
        stats: the training statistics (:func:`colour_stats`, stored in RUN/data.json); None: no check.
        rows: the rows of `images` the data consists of (default: all).
        what: how the data is named in the message.

    Returns:
        One line with the distance and both mean colours, or None.
    """
    if not stats:
        return None
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    return check_colour_features(patch_colours(images, rows[sample_rows(len(rows))]), stats, what)


def training_colour_stats(predictor: Model) -> dict | None:
    """The model's training colour statistics (the "colour" entry of :meth:`Predictor.training_data`: RUN/data.json,
    else an ONNX export's training_data metadata); None when there are none (a bare checkpoint, an old run, an
    export without them)."""
    info = predictor.training_data()
    stats = info.get("colour") if isinstance(info, dict) else None
    return stats if isinstance(stats, dict) and stats.get("method") == COLOUR_METHOD else None


def domain_warnings(
    predictor: Model,
    data_mpp: float | None,
    images: Any = None,
    rows: np.ndarray | None = None,
    colours: np.ndarray | None = None,
    what: str = "patches",
    model_mpp: float | None = None,
) -> tuple[list[str], float | None]:
    """Resolution and colour checks of the data against the model's training data.

    Args:
        predictor: the model (its card's µm/px; its run's colour statistics).
        data_mpp: µm/px of what the model is given (None: unknown, not checked).
        images: uint8 N x H x W x 3 data (a sample of at most 2,000 of `rows` is read), or None.
        rows: the rows of `images` the data consists of (default: all).
        colours: precomputed :func:`patch_colours` rows instead of `images` (e.g. sampled slide tiles).
        what: how the data is named in the messages ("patches", "tiles").
        model_mpp: the training µm/px when the card records none (e.g. slide's --model-mpp).

    Returns:
        (warning lines, colour distance or None when there is nothing to compare), the colour check left out
        when the model has no training colour statistics.
    """
    card = predictor.card
    lines = [check_resolution(data_mpp, card.mpp or model_mpp, what)]
    stats = training_colour_stats(predictor)
    distance = None
    if stats is not None:
        if colours is None and images is not None and len(images):
            rows = np.arange(len(images)) if rows is None else np.asarray(rows)
            colours = patch_colours(images, rows[sample_rows(len(rows))])
        if colours is not None and len(colours):
            distance = colour_distance(colours, stats)
            line = check_colour_features(colours, stats, what)
            if line and card.stain not in ("", "none"):
                line += f" (the run's {card.stain} stain normalisation may compensate)"
            lines.append(line)
    return [w for w in lines if w], distance
