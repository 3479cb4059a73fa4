"""Stain normalisation (Macenko, Reinhard): fit on reference patches, apply as a batched torch module."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

from histoscan.errors import HistoscanInputError
from histoscan.stain.ops import (
    MIN_PIXELS,
    concentrations,
    enough_tissue,
    lab_to_rgb,
    masked_mean_std,
    masked_quantile,
    optical_density,
    rgb_to_lab,
    tissue_mask,
    to_pixels,
    top2_eigenvectors,
)
from histoscan.utils.fs import atomic_write_text, guard_output

log = logging.getLogger(__name__)

# Hand-rolled in torch: MONAI's NormalizeHEStains (Macenko) is NumPy, one uint8 image at a time and raises on
# blank patches; these run vectorised over a batch on the batch's device inside PatchClassifier, so training,
# evaluation, prediction, slides and serving all apply exactly the same transform.

Method = Literal["macenko", "reinhard"]
METHODS = ("macenko", "reinhard")
# Defaults, shared by fitting and applying (the fitted config records the values used).
DEFAULTS: dict[str, float] = {
    "io": 240.0,  # transmitted light intensity (Macenko's Io): OD = -log((I + 1) / io), I in 0..255
    "beta": 0.15,  # tissue pixel: mean OD over R, G, B above beta (lighter pixels are glass/background)...
    "od_max": 3.0,  # ...and every channel's OD below od_max (darker pixels are ink, pen or black borders)
    "min_tissue": 0.05,  # patches with a smaller fraction of tissue pixels are passed through unchanged
    "alpha": 1.0,  # Macenko: the extreme stain angles are the alpha and (100 - alpha) percentiles
}
_COMMON = ("io", "beta", "od_max", "min_tissue")
_KEYS: dict[str, tuple[str, ...]] = {
    "macenko": ("stain_matrix", "max_concentrations", *_COMMON, "alpha"),
    "reinhard": ("mean", "std", *_COMMON),
}
_FIT_MAX_PIXELS = 2_000_000  # reference fits subsample the pooled tissue pixels to this many (seeded)


# ---------------------------------------------------------------- Macenko stain vectors


def _macenko_stains(od: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-image H and E stain vectors (unit OD vectors, N x 2 x 3, haematoxylin first), Macenko et al. 2009.

    Eigenvectors of the tissue OD covariance span the stain plane; the alpha / (100 - alpha) percentiles of
    the pixels' angles in that plane are the two stains.
    """
    w = mask.to(od.dtype)[..., None]
    n = w.sum(1, keepdim=True).clamp_min(2.0)
    mean = (od * w).sum(1, keepdim=True) / n
    d = (od - mean) * w
    cov = d.transpose(1, 2) @ d / (n - 1.0)
    ok = mask.sum(-1) >= MIN_PIXELS  # no degenerate/NaN matrices into the eigenvectors: identity stands in
    cov = torch.where(ok[:, None, None], cov, torch.eye(3, dtype=od.dtype, device=od.device).expand_as(cov))
    e1, e2 = top2_eigenvectors(cov)  # N x 3: principal and second axes of the stain plane
    # the principal axis points into positive OD, so every pixel's angle lies in (-pi/2, pi/2): no wrap-around
    # (the second axis's sign does not matter: flipping it swaps the two percentiles, same two vectors)
    e1 = e1 * torch.where(e1.sum(-1, keepdim=True) < 0, -1.0, 1.0)
    t1, t2 = (od * e1[:, None]).sum(-1), (od * e2[:, None]).sum(-1)
    phi = torch.atan2(t2, t1)
    lo, hi = masked_quantile(phi, mask, alpha / 100.0), masked_quantile(phi, mask, 1.0 - alpha / 100.0)
    v_lo = e1 * lo.cos()[:, None] + e2 * lo.sin()[:, None]
    v_hi = e1 * hi.cos()[:, None] + e2 * hi.sin()[:, None]
    # haematoxylin absorbs more red than eosin does (Ruifrok-Johnston: 0.65 vs 0.07 of unit OD)
    h_first = (v_lo[:, 0] >= v_hi[:, 0])[:, None]
    h, e = torch.where(h_first, v_lo, v_hi), torch.where(h_first, v_hi, v_lo)
    stains = torch.stack([h, e], 1)
    return stains * torch.where(stains.sum(-1, keepdim=True) < 0, -1.0, 1.0)  # OD vectors are non-negative


# ---------------------------------------------------------------- the normaliser modules


class _StainNormaliser(nn.Module):
    """Common part: tissue mask, blank-patch pass-through and its counter, NCHW <-> pixels."""

    method: str

    def __init__(self, io: float, beta: float, od_max: float, min_tissue: float):
        super().__init__()
        self.io, self.beta = float(io), float(beta)
        self.od_max, self.min_tissue = float(od_max), float(min_tissue)
        self.n_skipped = 0  # patches passed through unchanged for too little tissue, over this module's life
        self.n_seen = 0
        self._reported = (0, 0)  # (n_seen, n_skipped) at the last report()

    def _params(self) -> dict[str, float]:
        return {"io": self.io, "beta": self.beta, "od_max": self.od_max, "min_tissue": self.min_tissue}

    def _normalise(self, pix: torch.Tensor, od: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a batch N x 3 x H x W of floats in [0, 1]; blank patches come back unchanged."""
        if x.shape[0] == 0:
            return x
        n, _, h, w = x.shape
        with torch.autocast(x.device.type, enabled=False):  # float32 even inside a bf16/fp16-mixed step
            pix = to_pixels(x)
            od = optical_density(pix, self.io)
            mask = tissue_mask(od, self.beta, self.od_max)
            out = self._normalise(pix, od, mask)
            keep = enough_tissue(mask, self.min_tissue) & out.isfinite().all(-1).all(-1)
            out = torch.where(keep[:, None, None], out, pix).transpose(1, 2).reshape(n, 3, h, w).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        self._count(keep)
        return out

    def _count(self, keep: torch.Tensor) -> None:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
        if tracing:  # no host sync or Python side effects inside a traced/compiled graph
            return
        self.n_seen += len(keep)
        self.n_skipped += int((~keep).sum())

    def report(self, what: str = "patches") -> str | None:
        """One warning line for the patches passed through since the last report (None when there were none).

        Callers report once per epoch / per command, not once per batch: a log line per batch buried progress.
        """
        seen, skipped = self.n_seen - self._reported[0], self.n_skipped - self._reported[1]
        self._reported = (self.n_seen, self.n_skipped)
        if not skipped:
            return None
        pct = f"{100 * self.min_tissue:g}%"
        msg = f"stain {self.method}: {skipped} of {seen} {what} have < {pct} tissue pixels, left unchanged"
        log.warning(msg)
        return msg

    def to_config(self) -> dict[str, Any]:
        """Plain (JSON/YAML-safe) config that :func:`normaliser_from_config` turns back into this module."""
        raise NotImplementedError


class MacenkoNormaliser(_StainNormaliser):
    """Macenko et al. 2009: per-image stain vectors and 99th-percentile concentrations mapped to a reference.

    Args:
        stain_matrix: reference unit OD vectors [[H r, g, b], [E r, g, b]].
        max_concentrations: reference 99th-percentile H and E concentrations (over tissue pixels).
        io, beta, od_max, min_tissue, alpha: see DEFAULTS.
    """

    method = "macenko"

    def __init__(
        self,
        stain_matrix: Sequence[Sequence[float]],
        max_concentrations: Sequence[float],
        io: float = DEFAULTS["io"],
        beta: float = DEFAULTS["beta"],
        od_max: float = DEFAULTS["od_max"],
        min_tissue: float = DEFAULTS["min_tissue"],
        alpha: float = DEFAULTS["alpha"],
    ):
        super().__init__(io, beta, od_max, min_tissue)
        self.alpha = float(alpha)
        # non-persistent: the run's config.yaml, not the checkpoint, is the source of these values
        self.register_buffer(
            "stain_matrix", torch.tensor(stain_matrix, dtype=torch.float32), persistent=False
        )
        self.register_buffer("max_c", torch.tensor(max_concentrations, dtype=torch.float32), persistent=False)

    def _normalise(self, pix: torch.Tensor, od: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        stains = _macenko_stains(od, mask, self.alpha)
        conc = concentrations(od, stains)  # N x P x 2
        max_c = torch.stack([masked_quantile(conc[..., i], mask, 0.99) for i in range(2)], -1)  # N x 2
        conc = conc * (self.max_c / max_c.clamp_min(1e-6))[:, None]
        # inverse of the OD definition above (I + 1 = io * exp(-OD)), back to [0, 1]
        return ((self.io * torch.exp(-(conc @ self.stain_matrix)) - 1.0) / 255.0).clamp(0.0, 1.0)

    def to_config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "stain_matrix": self.stain_matrix.tolist(),
            "max_concentrations": self.max_c.tolist(),
            **self._params(),
            "alpha": self.alpha,
        }


class ReinhardNormaliser(_StainNormaliser):
    """Reinhard et al. 2001 in CIE L*a*b*: each channel's mean/std over tissue pixels matched to a reference.

    Args:
        mean, std: reference L*, a*, b* means and standard deviations (over tissue pixels).
        io, beta, od_max, min_tissue: tissue mask and blank-patch threshold, see DEFAULTS.
    """

    method = "reinhard"

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        io: float = DEFAULTS["io"],
        beta: float = DEFAULTS["beta"],
        od_max: float = DEFAULTS["od_max"],
        min_tissue: float = DEFAULTS["min_tissue"],
    ):
        super().__init__(io, beta, od_max, min_tissue)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def _normalise(self, pix: torch.Tensor, od: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lab = rgb_to_lab(pix)
        mean, std = masked_mean_std(lab, mask)
        out = lab_to_rgb((lab - mean[:, None]) / std.clamp_min(1e-3)[:, None] * self.std + self.mean)
        # Statistics are over tissue only, so the background would be mapped with the tissue's (small) std
        # and tinted; fade the mapping out below the tissue threshold so glass stays glass (0 at OD 0, 1 at
        # 2 beta).
        weight = (od.mean(-1, keepdim=True) / (2.0 * self.beta)).clamp(0.0, 1.0)
        return pix + weight * (out - pix)

    def to_config(self) -> dict[str, Any]:
        return {"method": self.method, "mean": self.mean.tolist(), "std": self.std.tolist(), **self._params()}


# ---------------------------------------------------------------- fitting, configs, files


def _reference_pixels(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 N x H x W x 3 array or list of H x W x 3 arrays -> 1 x P x 3 float pixels in [0, 1]."""
    arrays = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
    if not arrays:
        raise HistoscanInputError("stain reference: no images given")
    for a in arrays:
        a = np.asarray(a)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
            raise HistoscanInputError(
                f"stain reference: images must be uint8 H x W x 3 RGB, got {a.dtype} {tuple(a.shape)}"
            )
    pix = torch.cat([torch.as_tensor(np.array(a, dtype=np.uint8)).reshape(-1, 3) for a in arrays])
    return (pix.float() / 255.0)[None]


def fit_stain(
    images: np.ndarray | Sequence[np.ndarray], method: Method = "macenko", **options: float
) -> dict:
    """Fit a stain normaliser's reference on one or more patches (their tissue pixels pooled).

    Args:
        images: uint8 N x H x W x 3 (or one H x W x 3), or a list of H x W x 3 arrays of any sizes.
        method: "macenko" or "reinhard".
        **options: io, beta, od_max, min_tissue (and alpha for macenko), defaults in DEFAULTS.

    Returns:
        A plain dict (method, parameters as floats/lists, "reference" counts) for normaliser_from_config.
    """
    if method not in METHODS:
        raise HistoscanInputError(f"stain method: unknown '{method}' (choose from {', '.join(METHODS)})")
    unknown = sorted(set(options) - set(_KEYS[method]))
    if unknown:
        raise HistoscanInputError(f"stain {method}: unknown option(s) {', '.join(unknown)}")
    opts = {k: float(options.get(k, DEFAULTS[k])) for k in _KEYS[method] if k in DEFAULTS}
    pix = _reference_pixels(images)
    od = optical_density(pix, opts["io"])
    mask = tissue_mask(od, opts["beta"], opts["od_max"])
    n_tissue = int(mask.sum())
    if n_tissue < MIN_PIXELS:
        raise HistoscanInputError(f"stain reference: only {n_tissue} tissue pixels (blank or black images?)")
    pix, od = pix[mask][None], od[mask][None]  # pooled tissue pixels, 1 x T x 3
    if pix.shape[1] > _FIT_MAX_PIXELS:
        keep = torch.randperm(pix.shape[1], generator=torch.Generator().manual_seed(0))[:_FIT_MAX_PIXELS]
        pix, od = pix[:, keep], od[:, keep]
    mask = torch.ones(pix.shape[:2], dtype=torch.bool)
    n_images = 1 if isinstance(images, np.ndarray) and images.ndim == 3 else len(images)
    ref = {"n_images": n_images, "n_tissue_pixels": n_tissue}
    if method == "macenko":
        stains = _macenko_stains(od.double(), mask, opts["alpha"])
        conc = concentrations(od.double(), stains)
        max_c = [float(masked_quantile(conc[..., i], mask, 0.99)[0]) for i in range(2)]
        cfg = {"method": method, "stain_matrix": stains[0].tolist(), "max_concentrations": max_c, **opts}
    else:
        mean, std = masked_mean_std(rgb_to_lab(pix.double()), mask)
        cfg = {"method": method, "mean": mean[0].tolist(), "std": std[0].tolist(), **opts}
    cfg["reference"] = ref
    normaliser_from_config(cfg)  # validates what was fitted
    return cfg


def _check_floats(cfg: dict, key: str, shape: tuple[int, ...], positive: bool = False) -> None:
    try:
        a = np.asarray(cfg[key], dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != shape or not np.isfinite(a).all() or (positive and (a <= 0).any()):
        what = "positive numbers" if positive else "numbers"
        raise HistoscanInputError(f"stain.{key}: expected {' x '.join(map(str, shape))} finite {what}")


def normaliser_from_config(cfg: dict) -> MacenkoNormaliser | ReinhardNormaliser:
    """Build the stain normaliser module from a config made by :func:`fit_stain` (e.g. TrainConfig.stain)."""
    if not isinstance(cfg, dict):
        raise HistoscanInputError(f"stain: expected a mapping with 'method', got {type(cfg).__name__}")
    method = cfg.get("method")
    if method not in METHODS:
        raise HistoscanInputError(f"stain.method: '{method}' is not one of {', '.join(METHODS)}")
    unknown = sorted(set(cfg) - set(_KEYS[method]) - {"method", "reference"})
    if unknown:
        raise HistoscanInputError(f"stain: unknown field(s) {', '.join(unknown)} for method {method}")
    for k in _KEYS[method]:
        if k in DEFAULTS and k in cfg:
            _check_floats(cfg, k, (), positive=k != "min_tissue")
    kwargs = {k: cfg[k] for k in _KEYS[method] if k in cfg}
    if method == "macenko":
        _check_floats(cfg, "stain_matrix", (2, 3))
        _check_floats(cfg, "max_concentrations", (2,), positive=True)
        return MacenkoNormaliser(**kwargs)
    _check_floats(cfg, "mean", (3,))
    _check_floats(cfg, "std", (3,), positive=True)
    return ReinhardNormaliser(**kwargs)


def save_stain(cfg: dict, path: str | Path, force: bool = False) -> Path:
    """Write a fitted stain config as JSON (or YAML for a .yaml/.yml path), atomically; an existing file needs
    `force`."""
    path = guard_output(path, force, "file")
    text = yaml.safe_dump(cfg, sort_keys=False) if path.suffix.lower() in (".yaml", ".yml") else None
    return atomic_write_text(path, text if text is not None else json.dumps(cfg, indent=2) + "\n")


def load_stain(path: str | Path) -> dict:
    """Read and validate a stain config written by `histoscan stain fit` (JSON or YAML)."""
    path = Path(path)
    if not path.is_file():
        raise HistoscanInputError(f"{path}: stain file not found")
    try:
        cfg = yaml.safe_load(path.read_text())  # YAML is a superset of the JSON written by save_stain
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HistoscanInputError(f"{path}: not valid JSON/YAML ({str(e).splitlines()[0]})") from None
    try:
        normaliser_from_config(cfg)
    except HistoscanInputError as e:
        raise HistoscanInputError(f"{path}: {e}") from None
    return cfg
