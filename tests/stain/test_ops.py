"""Batched stain tensor ops: eigenvectors without eigh, masked statistics, CIE L*a*b*, optical density."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoscan.stain.ops import (
    concentrations,
    enough_tissue,
    lab_to_rgb,
    masked_mean_std,
    masked_quantile,
    optical_density,
    rgb_to_lab,
    to_pixels,
    top2_eigenvectors,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_eigenvectors_match_eigh() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 3, 3, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) + 1e-3 * torch.eye(3, dtype=torch.float64)
    e1, e2 = top2_eigenvectors(cov)
    ref = torch.linalg.eigh(cov).eigenvectors
    assert torch.allclose((e1 * ref[..., 2]).sum(-1).abs(), torch.ones(64, dtype=torch.float64), atol=1e-6)
    assert torch.allclose((e2 * ref[..., 1]).sum(-1).abs(), torch.ones(64, dtype=torch.float64), atol=1e-6)


def test_lab_white_and_masked_mean() -> None:
    lab = rgb_to_lab(torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]))
    assert torch.allclose(lab[0, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)  # D65 white
    mean, _ = masked_mean_std(lab, torch.tensor([[False, True]]))
    assert torch.allclose(mean, torch.zeros(1, 3), atol=1e-4)


def test_lab_round_trip() -> None:
    rgb = torch.rand(2, 500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-6)


def test_masked_quantile_matches_numpy_percentile() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(4, 100, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 100, generator=g) < 0.5
    mask[3] = False  # a row without any masked value gives 0
    for q in (0.0, 0.01, 0.5, 0.99, 1.0):
        got = masked_quantile(v, mask, q)
        for i in range(3):
            assert float(got[i]) == pytest.approx(np.percentile(v[i][mask[i]].numpy(), 100 * q), abs=1e-12)
        assert float(got[3]) == 0.0


def test_optical_density_concentrations_and_tissue_floor() -> None:
    x = torch.full((1, 3, 4, 4), 239.0 / 255.0)  # (I + 1) / io == 1 at io 240: zero OD
    pix = to_pixels(x)
    assert pix.shape == (1, 16, 3)
    assert torch.allclose(optical_density(pix, 240.0), torch.zeros(1, 16, 3), atol=1e-6)
    stains = torch.nn.functional.normalize(torch.tensor([[[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]]]), dim=-1)
    c = torch.tensor([[[0.5, 1.0], [2.0, 0.25]]])
    assert torch.allclose(concentrations(c @ stains, stains), c, atol=1e-5)
    mask = torch.zeros(2, 100, dtype=torch.bool)
    mask[0, :16], mask[1, :15] = True, True
    assert enough_tissue(mask, 0.05).tolist() == [True, False]  # the 16-pixel floor beats 5% of 100
