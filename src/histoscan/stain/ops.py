"""Low-level batched tensor ops for stain and colour: the one optical density, tissue masks, masked statistics,
LAB."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

MIN_PIXELS = 16  # absolute floor of tissue pixels for a covariance / percentile estimate

# sRGB (D65) <-> CIE XYZ, and the D65 white point (the values OpenCV uses)
_XYZ_FROM_RGB = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_DELTA = 6.0 / 29.0


# ---------------------------------------------------------------- shared tensor helpers (N x P x 3 pixels)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W -> N x P x 3 float32."""
    return x.float().flatten(2).transpose(1, 2)


def optical_density(pix: torch.Tensor, io: float) -> torch.Tensor:
    """The one optical density: OD = -log((I + 1) / io) for intensities I = 255 * pix (pix in [0, 1]), floored
    at 0 (I + 1 > io is brighter than the light source). Macenko's io is 240 (the normalisers); the colour-domain
    check (:mod:`histoscan.stain.domain`) uses 256, so that only pure white has OD 0."""
    return -torch.log(((pix * 255.0 + 1.0) / io).clamp(max=1.0))


def od_table(io: float) -> np.ndarray:
    """:func:`optical_density` of every uint8 intensity 0..255, float32: uint8 -> OD as one lookup."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    return optical_density(levels, io).to(torch.float32).numpy()


def tissue_mask(
    od: torch.Tensor, beta: float, od_max: float = math.inf, rule: Literal["mean", "any"] = "mean"
) -> torch.Tensor:
    """Stained (tissue) pixels of OD pixels ... x 3: OD above `beta` and every channel below `od_max`.

    `rule` says which OD is compared with `beta`. "mean" (the normalisers): the mean over the channels. Not
    Macenko's "every channel above beta": pale eosin-stained stroma has a bright red channel, and the
    every-channel rule called 20% of real idc-breast patches blank (mean rule: 0.5%); a mean OD above 0.15
    still keeps near-white pixels, whose stain-plane angles are noise, out of the estimate. "any": any channel
    (the colour-domain statistics, "od-share-v1": stored in every run's data.json, so their rule stays).
    """
    level = od.mean(-1) if rule == "mean" else od.amax(-1)
    return (level > beta) & (od.amax(-1) < od_max)


def masked_quantile(v: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile (0..1, linear interpolation as numpy.percentile) of v[mask]; rows without any: 0."""
    n = mask.sum(-1)
    srt = torch.where(mask, v, torch.full_like(v, math.inf)).sort(-1).values
    pos = q * (n - 1).clamp_min(0).to(v.dtype)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (n - 1).clamp_min(0))
    frac = pos - lo.to(v.dtype)
    a, b = srt.gather(-1, lo[..., None])[..., 0], srt.gather(-1, hi[..., None])[..., 0]
    out = a + (b - a) * frac
    return torch.where(n > 0, out, torch.zeros_like(out))


def masked_mean_std(v: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and (unbiased) std of N x P x C values over the masked pixels -> N x C each."""
    w = mask.to(v.dtype)[..., None]
    n = w.sum(1).clamp_min(2.0)
    mean = (v * w).sum(1) / n
    var = (((v - mean[:, None]) ** 2) * w).sum(1) / (n - 1.0)
    return mean, var.sqrt()


def enough_tissue(mask: torch.Tensor, min_tissue: float) -> torch.Tensor:
    return mask.sum(-1) >= max(MIN_PIXELS, math.ceil(min_tissue * mask.shape[-1]))


def top2_eigenvectors(cov: torch.Tensor, squarings: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors of the two largest eigenvalues of symmetric PSD 3 x 3 matrices (N x 3 x 3 -> 2 x N x 3).

    Hand-rolled instead of torch.linalg.eigh, which has no ONNX operator: with it, a model trained with
    Macenko normalisation could not be exported. Repeated squaring (power iteration with exponent 2^12)
    gives the principal axis; the second is the major axis of the 2 x 2 restriction to its complement,
    in closed form. Matches eigh to ~1e-6 (tests/stain/test_ops.py).
    """
    b = cov / cov.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-20)[:, None, None]
    for _ in range(squarings):
        b = b @ b
        b = b / b.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-20)[:, None, None]
    # b is now ~ e1 e1^T: its largest column is along e1
    col = b.norm(dim=1).argmax(-1)
    e1 = torch.nn.functional.normalize(b.gather(2, col[:, None, None].expand(-1, 3, 1))[..., 0], dim=-1)
    p = torch.eye(3, dtype=cov.dtype, device=cov.device) - e1[:, :, None] * e1[:, None, :]
    col = p.norm(dim=1).argmax(-1)
    u = torch.nn.functional.normalize(p.gather(2, col[:, None, None].expand(-1, 3, 1))[..., 0], dim=-1)
    w = torch.linalg.cross(e1, u)
    au, aw = (cov @ u[..., None])[..., 0], (cov @ w[..., None])[..., 0]
    a, c, off = (u * au).sum(-1), (w * aw).sum(-1), (u * aw).sum(-1)
    theta = 0.5 * torch.atan2(2.0 * off, a - c)
    e2 = u * theta.cos()[:, None] + w * theta.sin()[:, None]
    return e1, e2


def concentrations(od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
    """Least-squares H/E concentrations N x P x 2 of OD pixels N x P x 3 for stain vectors N x 2 x 3."""
    gram = stains @ stains.transpose(1, 2)  # N x 2 x 2, inverted in closed form (no lstsq/pinv kernel needed)
    a, b, d = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
    det = (a * d - b * b).clamp_min(1e-8)
    inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-b, a], -1)], -2) / det[:, None, None]
    return od @ stains.transpose(1, 2) @ inv


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA**3, t.clamp_min(1e-12).pow(1.0 / 3.0), t / (3 * _DELTA**2) + 4.0 / 29.0)


def _lab_finv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4.0 / 29.0))


def rgb_to_lab(pix: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (... x 3) -> CIE L*a*b* (D65), L in 0..100."""
    lin = torch.where(pix <= 0.04045, pix / 12.92, ((pix.clamp_min(0.0) + 0.055) / 1.055) ** 2.4)
    fx, fy, fz = _lab_f(lin @ _XYZ_FROM_RGB.T.to(pix) / _WHITE.to(pix)).unbind(-1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], -1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) -> sRGB clamped to [0, 1]."""
    fy = (lab[..., 0] + 16) / 116
    f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    lin = ((_lab_finv(f) * _WHITE.to(lab)) @ _RGB_FROM_XYZ.T.to(lab)).clamp(0.0, 1.0)
    srgb = torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return srgb.clamp(0.0, 1.0)
