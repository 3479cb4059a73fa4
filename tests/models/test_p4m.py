"""`p4m-cnn`: the group tables, exact invariance to the 8 flips/rotations, and that it trains and explains."""

from __future__ import annotations

import pytest
import torch

from histoscan.models import create_model, target_layer_name
from histoscan.models.p4m import GroupConv, LiftingConv, d4_tables
from histoscan.utils.dihedral import dihedral


def test_d4_tables_form_a_group() -> None:
    mult, inv = d4_tables()
    assert sorted(mult[0]) == list(range(8)) and list(mult[0]) == list(range(8))  # identity is view 0
    for a in range(8):
        assert mult[a][inv[a]] == 0 and mult[inv[a]][a] == 0
        assert sorted(mult[a]) == list(range(8))  # each row a permutation (Latin square)
        for b in range(8):
            for c in range(8):
                assert mult[mult[a][b]][c] == mult[a][mult[b][c]]  # associative
    assert any(mult[a][b] != mult[b][a] for a in range(8) for b in range(8))  # D4 is not abelian


def test_group_layers_are_equivariant() -> None:
    """Transforming the input by view h transforms the output spatially by h and permutes its orientations.

    Computed in float64: in exact arithmetic both sides are equal, so they may differ only by the rounding of
    reordered sums, a few float64 epsilons times the magnitudes involved (`_rounding_tol`).
    """
    torch.manual_seed(0)
    mult, inv = d4_tables()
    lift, conv = LiftingConv(3, 4).double(), GroupConv(4, 5).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    f = conv(lift(x))
    tol = _rounding_tol(f)
    for h in range(8):
        g = conv(lift(dihedral(x, h))).reshape(2, 5, 8, 12, 12)
        want = dihedral(f, h).reshape(2, 5, 8, 12, 12)[:, :, [mult[inv[h]][k] for k in range(8)]]
        torch.testing.assert_close(g, want, atol=tol, rtol=0)


def _rounding_tol(out: torch.Tensor) -> float:
    """What reordering float64 sums may change in `out`: epsilon x 2^20 x the output's magnitude.

    2^20 covers the roundings accumulated through up to five conv layers of ~10^3-term sums (each term's error
    ~ eps x its magnitude) with a wide margin; a transformation the model is *not* invariant to changes the
    output by ~10^-2 or more, ten orders of magnitude above it.
    """
    return torch.finfo(torch.float64).eps * 2**20 * (1.0 + float(out.abs().max()))


@pytest.mark.parametrize("size", [50, 96])
def test_prediction_is_invariant_to_every_dihedral_view(size: int) -> None:
    """Exact invariance, checked in float64 against the rounding tolerance (never against another input's effect,
    which depends on the machine's float32 rounding)."""
    torch.manual_seed(1)
    model = create_model("p4m-cnn").eval().double()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        base = model(x)
        dev = max(float((model(dihedral(x, k)) - base).abs().max()) for k in range(8))
    tol = _rounding_tol(base)
    assert dev <= tol
    plain = create_model("simple-cnn").eval().double()  # the control: an ordinary CNN is not invariant
    with torch.no_grad():
        p0 = plain(x)
        plain_dev = max(float((plain(dihedral(x, k)) - p0).abs().max()) for k in range(8))
    assert plain_dev > 1e6 * _rounding_tol(p0)


def test_small_input_resnets_keep_resolution() -> None:
    seen: dict[str, int] = {}
    for name, stride in (("resnet18", 4), ("resnet10-small", 1), ("resnet18-small", 1)):
        model = create_model(name).eval()
        x = torch.randn(1, 3, 64, 64)
        model.layer1.register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.shape[-1]}))
        with torch.no_grad():
            assert model(x).shape == (1, 1)
        assert seen[name] == 64 // stride, name
    assert target_layer_name("p4m-cnn", create_model("p4m-cnn")) == "features.4.2"
