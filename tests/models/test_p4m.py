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
    """Transforming the input by view h transforms the output spatially by h and permutes its orientations."""
    torch.manual_seed(0)
    mult, inv = d4_tables()
    lift, conv = LiftingConv(3, 4), GroupConv(4, 5)
    x = torch.randn(2, 3, 12, 12)
    f = conv(lift(x))
    for h in range(8):
        g = conv(lift(dihedral(x, h))).reshape(2, 5, 8, 12, 12)
        want = dihedral(f, h).reshape(2, 5, 8, 12, 12)[:, :, [mult[inv[h]][k] for k in range(8)]]
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [50, 96])
def test_prediction_is_invariant_to_every_dihedral_view(size: int) -> None:
    torch.manual_seed(1)
    model = create_model("p4m-cnn").eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        base = model(x)
        dev = max(float((model(dihedral(x, k)) - base).abs().max()) for k in range(8))
        spread = float((model(x.flip(0)) - base).abs().max())  # what other inputs change
    assert dev < 1e-4 and dev < 1e-3 * spread
    plain = create_model("simple-cnn").eval()  # the control: an ordinary CNN is not invariant
    with torch.no_grad():
        p0 = plain(x)
        plain_dev = max(float((plain(dihedral(x, k)) - p0).abs().max()) for k in range(8))
    assert plain_dev > 100 * dev


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
