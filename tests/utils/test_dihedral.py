"""The one D4 definition: the 8 views in NHWC (TTA) and NCHW (augmentation) layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histoscan.utils.dihedral import dihedral, dihedral_views


def test_nhwc_views_are_the_eight_symmetries() -> None:
    x = torch.arange(2 * 3 * 3 * 2, dtype=torch.uint8).reshape(2, 3, 3, 2)
    v = [t.numpy() for t in dihedral_views(x, 8, dims=(1, 2))]
    a = x.numpy()
    want = [np.rot90(a, k, axes=(1, 2)) for k in range(4)] + [
        np.rot90(a[:, :, ::-1], k, axes=(1, 2)) for k in range(4)
    ]
    for got, w in zip(v, want, strict=True):
        np.testing.assert_array_equal(got, w)
    assert len({g.tobytes() for g in v}) == 8
    assert len(dihedral_views(x, 4, dims=(1, 2))) == 4


def test_nchw_and_nhwc_orders_agree() -> None:
    nhwc = torch.rand(2, 5, 5, 3)
    nchw = nhwc.permute(0, 3, 1, 2)
    for k in range(8):
        torch.testing.assert_close(dihedral(nchw, k).permute(0, 2, 3, 1), dihedral(nhwc, k, dims=(1, 2)))


def test_k_out_of_range() -> None:
    with pytest.raises(ValueError, match="0..7"):
        dihedral(torch.zeros(1, 2, 2), 8)
