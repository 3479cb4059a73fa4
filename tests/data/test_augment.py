"""Batched augmentation: shapes, ranges, labels untouched, eval identity, D4 views, seeding, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from histoscan.config import AUGMENT_OPS
from histoscan.data.augment import BatchAugment
from histoscan.errors import HistoscanInputError
from histoscan.utils.dihedral import dihedral, dihedral_views

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _asymmetric(size: int = 5) -> torch.Tensor:
    """1 x 1 x S x S image with no symmetry: every D4 element maps it to a different array."""
    return torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size)


@pytest.mark.parametrize("ops", [[op] for op in AUGMENT_OPS] + [list(AUGMENT_OPS)])
def test_shape_dtype_range_preserved(ops: list[str]) -> None:
    x = _batch()
    for dtype in (torch.float32, torch.float64):
        y = BatchAugment(ops)(x.to(dtype))
        assert y.shape == x.shape and y.dtype == dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.isfinite(y).all()
        assert not torch.equal(y, x.to(dtype))  # it did augment


def test_channels_last_kept() -> None:
    x = _batch().contiguous(memory_format=torch.channels_last)
    assert BatchAugment()(x).is_contiguous(memory_format=torch.channels_last)


def test_labels_pass_through_untouched() -> None:
    x, labels = _batch(), torch.tensor([0.0, 1.0] * 8)
    before = labels.clone()
    y, out_labels = BatchAugment()(x, labels)
    assert out_labels is labels and torch.equal(out_labels, before)
    assert y.shape == x.shape and not torch.equal(y, x)


def test_eval_mode_is_identity() -> None:
    aug = BatchAugment().eval()
    x = _batch()
    assert aug(x) is x
    assert torch.equal(aug(x, torch.ones(16))[0], x)
    aug.train()
    assert not torch.equal(aug(x), x)


def test_empty_ops_is_identity_and_unknown_op_is_named() -> None:
    x = _batch()
    assert BatchAugment([])(x) is x
    with pytest.raises(HistoscanInputError, match="augment: unknown op.*blur"):
        BatchAugment(["d4", "blur"])
    assert BatchAugment("d4,hed").ops == ["d4", "hed"]  # comma string, as on the command line


def test_dihedral_views_are_the_8_distinct_flips_and_rotations() -> None:
    x = _asymmetric()
    views = dihedral_views(x)
    assert len(views) == 8 and views[0] is x
    expected = [torch.rot90(x, k, (-2, -1)) for k in range(4)] + [
        torch.rot90(x.flip(-1), k, (-2, -1)) for k in range(4)
    ]
    for v, e in zip(views, expected, strict=True):
        assert torch.equal(v, e)
    as_tuples = {tuple(v.flatten().tolist()) for v in views}
    assert len(as_tuples) == 8  # pairwise distinct
    # the group is closed: transposes and vertical flips are among the 8
    assert tuple(x.transpose(-1, -2).flatten().tolist()) in as_tuples
    assert tuple(x.flip(-2).flatten().tolist()) in as_tuples
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_d4_gives_each_sample_one_of_the_8_views_and_all_occur() -> None:
    x = _asymmetric().expand(256, 3, 5, 5).contiguous()
    views = {tuple(v[0, 0].flatten().tolist()): k for k, v in enumerate(dihedral_views(_asymmetric()))}
    torch.manual_seed(0)
    y = BatchAugment(["d4"])(x)
    seen = []
    for img in y:
        assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])  # channels move together
        seen.append(views[tuple(img[0].flatten().tolist())])  # KeyError if not a D4 view
    counts = torch.bincount(torch.tensor(seen), minlength=8)
    assert (counts > 10).all(), counts  # 256 draws: every view shows up (expected 32 each)


def test_random_per_sample() -> None:
    x = _batch(1).expand(8, -1, -1, -1).contiguous()
    for op in ("affine", "color", "hed"):
        y = BatchAugment([op])(x)
        assert all(not torch.allclose(y[0], y[i]) for i in range(1, 8)), op


def test_seeded_determinism() -> None:
    x = _batch()
    aug = BatchAugment()
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(x))  # next draw differs
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(aug(x, generator=g1), aug(x, generator=g2))
    assert torch.equal(
        BatchAugment(generator=torch.Generator().manual_seed(7))(x), aug(x, generator=g1.manual_seed(7))
    )


def test_zero_strength_ops_are_identity() -> None:
    x = _batch()
    kw = dict(rotation=0.0, zoom=0.0, shear=0.0, brightness=0.0, contrast=0.0, hed_sigma=0.0)
    for op in ("affine", "color", "hed"):
        assert torch.allclose(BatchAugment([op], **kw)(x), x, atol=1e-5), op


def test_affine_reflection_padding_adds_no_border() -> None:
    # a constant image stays constant under any rotation/zoom/shear: no zero (black) corners come in
    x = torch.full((32, 3, 24, 24), 0.7)
    y = BatchAugment(["affine"], rotation=45.0, zoom=0.5, shear=0.3)(x)
    assert torch.allclose(y, x, atol=1e-5)


def test_affine_rotation_moves_pixels_within_range() -> None:
    # a vertical bar rotated by up to 20 degrees: its centre stays, its ends move sideways
    x = torch.zeros(64, 3, 33, 33)
    x[:, :, 4:29, 15:18] = 1.0
    y = BatchAugment(["affine"], rotation=20.0, zoom=0.0, shear=0.0)(x)
    assert torch.allclose(y[:, :, 16, 16], torch.ones(64, 3), atol=1e-4)
    mass = y[:, 0].sum(dim=(-2, -1))
    assert torch.allclose(mass, x[:, 0].sum(dim=(-2, -1)), rtol=0.05)  # a rotation keeps the bar's area
    top_col = (y[:, 0, 6] * torch.arange(33.0)).sum(-1) / y[:, 0, 6].sum(-1)
    assert (top_col - 16).abs().max() > 2.0  # some sample rotated visibly
    assert (top_col - 16).abs().max() < 10 * torch.tan(torch.tensor(20.0).deg2rad()) + 1.5  # never beyond 20°


def test_brightness_factor_within_range() -> None:
    x = torch.full((64, 3, 8, 8), 0.5)
    y = BatchAugment(["color"], brightness=0.1, contrast=0.0)(x)
    ratio = y / x
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)  # one factor per image
    assert float(ratio.min()) >= 0.9 - 1e-6 and float(ratio.max()) <= 1.1 + 1e-6
    assert float(per_image[:, 0].std()) > 0.02  # spread over the range, not stuck at 1


def test_hed_jitter_is_small_and_stain_specific() -> None:
    x = 0.2 + 0.6 * _batch(32)
    y = BatchAugment(["hed"], hed_sigma=0.05)(x)
    diff = (y - x).abs()
    assert 0.002 < float(diff.mean()) < 0.05
    # jitter acts per stain in Ruifrok-Johnston HED space: a pure-haematoxylin image (H concentration 1.5)
    # comes back with H in 1.5 * [0.95, 1.05] +- 0.05 and eosin/DAB only shifted by at most +- 0.05
    aug = BatchAugment(["hed"], hed_sigma=0.05)
    h_vec = torch.tensor([0.65, 0.70, 0.29]) / torch.tensor([0.65, 0.70, 0.29]).norm()
    h_only = torch.exp(-1.5 * h_vec).view(1, 3, 1, 1).expand(64, 3, 4, 4).contiguous()
    hed_in = (-torch.log(h_only).permute(0, 2, 3, 1)) @ aug.hed_from_rgb
    assert torch.allclose(hed_in, torch.tensor([1.5, 0.0, 0.0]).expand_as(hed_in), atol=1e-4)
    hed_out = (-torch.log(aug(h_only)).permute(0, 2, 3, 1)) @ aug.hed_from_rgb
    lo, hi = 1.5 * 0.95 - 0.05 - 1e-4, 1.5 * 1.05 + 0.05 + 1e-4
    assert (hed_out[..., 0] >= lo).all() and (hed_out[..., 0] <= hi).all()
    assert hed_out[..., 1:].abs().max() <= 0.05 + 1e-4
    assert float(hed_out[..., 0].std()) > 0.01  # jittered, per sample


def test_fast_on_cpu() -> None:
    x = torch.rand(64, 3, 96, 96)
    aug = BatchAugment()
    aug(x)
    t = time.perf_counter()
    aug(x)
    assert (
        time.perf_counter() - t < 5.0
    )  # ~0.3 s on 2 free cores, ~1 s on busy ones; a per-sample loop is slower


def test_d4_folded_into_affine_grid_is_exact() -> None:
    """With d4 and a zero-strength affine, the fused single grid_sample still yields exact D4 views."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    aug = BatchAugment(["d4", "affine"], rotation=0.0, zoom=0.0, shear=0.0).train()
    y = aug(x)
    seen = set()
    for i in range(len(x)):
        errs = [float((dihedral(x[i], k) - y[i]).abs().max()) for k in range(8)]
        k = int(np.argmin(errs))
        assert errs[k] < 1e-5, errs
        seen.add(k)
    assert seen == set(range(8))
