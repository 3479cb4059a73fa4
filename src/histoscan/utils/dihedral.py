"""The dihedral group D4 of a square image: the one definition of the 8 views, for augmentation and TTA."""

from __future__ import annotations

import torch


def dihedral(x: torch.Tensor, k: int, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """The k-th of the 8 dihedral (D4) views of images whose spatial axes are `dims` (H, W).

    Args:
        x: a tensor whose axes `dims` are H x W (NCHW: the default (-2, -1); NHWC: (1, 2)).
        k: 0..3 rotate by k * 90° counter-clockwise; 4..7 flip left-right, then rotate by (k - 4) * 90°.
        dims: the (H, W) axes.

    Returns:
        The view, same dtype and device (k=0 returns `x` itself).
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral view k must be in 0..7, got {k}")
    if k >= 4:
        x = x.flip(dims[1])
    return torch.rot90(x, k % 4, dims=dims) if k % 4 else x


def dihedral_views(x: torch.Tensor, n: int = 8, dims: tuple[int, int] = (-2, -1)) -> list[torch.Tensor]:
    """The first `n` D4 views of `x` in the order of :func:`dihedral` (view 0 is `x`)."""
    return [dihedral(x, k, dims) for k in range(n)]
