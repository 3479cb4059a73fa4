"""Fidelity measures on a hand-made model whose evidence is known: pointing game, deletion/insertion, flat maps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from histoscan.errors import HistoscanInputError
from histoscan.gradcam.cam import cam_maps, resolve_method, tiles_exactly
from histoscan.models.classifier import PatchClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # benchmark code, not the package
from fidelity import (  # noqa: E402
    blurred,
    centre_composites,
    deletion_insertion,
    half_composites,
    paired_difference,
    peak_hits,
    pointing_game,
    quadrant_composites,
    smooth_random_maps,
    wilson_ci,
)

S = 32
TUMOUR, NORMAL = (60, 40, 160), (230, 150, 200)  # "tumour" pixels are blue, "normal" ones pink

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ColourNet(nn.Module):
    """logit = 12 * mean over the image of ReLU(B - R - bias) (ImageNet-normalised colour) - 2.

    Its only evidence is blue pixels, wherever they are: Grad-CAM must point at the pasted tumour part.
    `features.1` is the full-resolution detector, `features.2` its 4 x 4 average (an 8 x 8 map at 32 px).
    """

    def __init__(self, bias: float = 0.5):
        super().__init__()
        conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1))
            conv.bias.fill_(-bias)
        self.features = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1) * 12.0 - 2.0


def colour_model(bias: float = 0.5) -> PatchClassifier:
    return PatchClassifier(ColourNet(bias)).eval()


def patches(colour: tuple[int, int, int], n: int, rng: np.random.Generator, noise: int = 12) -> np.ndarray:
    x = np.asarray(colour, np.int16) + rng.integers(-noise, noise + 1, (n, S, S, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def score(model: PatchClassifier):
    def proba(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(model(torch.as_tensor(np.ascontiguousarray(images)))).numpy()

    return proba


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return patches(TUMOUR, 200, rng), patches(NORMAL, 200, rng)


def test_composites_paste_the_tumour_part_where_the_mask_says(pair) -> None:
    tumour, normal = pair
    rng = np.random.default_rng(1)
    for (images, masks), share in (
        (quadrant_composites(tumour, normal, rng), 0.25),
        (half_composites(tumour, normal, rng), 0.5),
        (centre_composites(tumour, normal), 0.25),
    ):
        assert images.shape == (200, S, S, 3) and masks.shape == (200, S, S)
        assert masks.mean() == pytest.approx(share)
        blue = images[..., 2].astype(int) - images[..., 0] > 0
        assert np.array_equal(blue, masks)
    quad_masks = quadrant_composites(tumour, normal, rng)[1]
    corners = {tuple(np.argwhere(m)[0]) for m in quad_masks}
    assert corners == {(0, 0), (0, S // 2), (S // 2, 0), (S // 2, S // 2)}  # every quadrant is used
    with pytest.raises(HistoscanInputError, match="must both be N x S x S x 3"):
        quadrant_composites(tumour[:, :16], normal, rng)


@pytest.mark.parametrize("layer", ["features.1", "features.2"])
def test_gradcam_of_the_known_model_points_at_the_tumour_part(pair, layer: str) -> None:
    tumour, normal = pair
    model = colour_model()
    rng = np.random.default_rng(2)
    for images, masks in (
        quadrant_composites(tumour, normal, rng),
        half_composites(tumour, normal, rng),
        centre_composites(tumour, normal),
    ):
        res = cam_maps(model, images, layer)
        assert (res.probabilities >= 0.5).all()  # every composite is called tumour
        pt = pointing_game(res.maps, masks, res.probabilities >= 0.5)
        assert pt.n == 200 and pt.rate >= 0.97 and pt.above_chance


def test_a_position_artefact_scores_at_chance(pair) -> None:
    """A map that always peaks in the top-left corner 'points' only as often as the quadrant is top-left."""
    tumour, normal = pair
    images, masks = quadrant_composites(tumour, normal, np.random.default_rng(3))
    yy, xx = np.mgrid[0:S, 0:S]
    corner = np.broadcast_to(np.exp(-(yy**2 + xx**2) / 50.0), masks.shape)
    pt = pointing_game(corner, masks)
    assert pt.chance == pytest.approx(0.25)
    assert abs(pt.rate - 0.25) < 0.1 and pt.ci95[0] < 0.25 < pt.ci95[1] and not pt.above_chance
    centre = centre_composites(tumour, normal)[1]
    assert pointing_game(corner, centre).hits == 0  # the centre test exposes it outright


def test_peak_hits_counts_a_constant_map_as_a_miss() -> None:
    masks = np.ones((2, 4, 4), bool)
    maps = np.stack([np.zeros((4, 4)), np.eye(4)])
    assert peak_hits(maps, masks).tolist() == [False, True]
    pt = pointing_game(maps, masks, np.array([True, False]))
    assert (pt.hits, pt.n) == (0, 1)
    with pytest.raises(HistoscanInputError, match="differ in shape"):
        peak_hits(maps, masks[:, :2])


def test_wilson_interval() -> None:
    lo, hi = wilson_ci(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(0, 10)[1] == pytest.approx(0.2775, abs=1e-3)
    assert wilson_ci(0, 0) == (0.0, 1.0)
    mean, lo, hi = paired_difference(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0]))
    assert mean == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_deletion_drops_faster_along_the_true_saliency_than_in_random_order(pair) -> None:
    tumour, normal = pair
    model = colour_model()
    rng = np.random.default_rng(4)
    images, masks = quadrant_composites(tumour[:24], normal[:24], rng)
    maps = cam_maps(model, images, "features.2").maps
    random = smooth_random_maps(len(images), S, 8, rng)
    proba = score(model)
    true = deletion_insertion(proba, images, maps, rng, baseline=normal[24:48])
    ctrl = deletion_insertion(proba, images, random, rng, baseline=normal[24:48])
    assert true.fractions[0] == 0.0 and true.fractions[-1] == 1.0 and len(true.fractions) == 51
    np.testing.assert_allclose(true.deletion[:, 0], proba(images), atol=1e-6)
    np.testing.assert_allclose(true.deletion[:, -1], proba(normal[24:48]), atol=1e-6)
    np.testing.assert_allclose(true.insertion[:, 0], true.deletion[:, -1], atol=1e-6)
    assert true.deletion_auc < ctrl.deletion_auc - 0.2
    assert true.insertion_auc > ctrl.insertion_auc + 0.2
    d, lo, hi = paired_difference(true.deletion_aucs, ctrl.deletion_aucs)
    assert hi < 0
    # the default baseline (blurred images) runs too; a blurred image keeps its mean colour
    default = deletion_insertion(proba, images[:2], maps[:2], rng, step=0.25)
    assert default.deletion.shape == (2, 5)
    assert abs(float(blurred(images[:2]).mean()) - float(images[:2].mean())) < 2.0
    with pytest.raises(HistoscanInputError, match="do not match"):
        deletion_insertion(proba, images, maps[:, :4], rng)


def test_near_blank_patch_gets_no_hot_spot() -> None:
    """A near-white patch the model calls tumour with confidence, uniformly: its map is flat and shown blank,
    not noise stretched to a hot blob."""
    rng = np.random.default_rng(5)
    model = colour_model(bias=-0.5)  # white: B - R ~ 0.39 in normalised units, + 0.5: a uniform response
    blank = patches((245, 245, 245), 4, rng, noise=2)
    res = cam_maps(model, blank, "features.2", method="gradcam")
    assert (res.probabilities > 0.99).all()
    assert res.flat.all() and (res.maps == 0).all()
    raw = cam_maps(model, blank, "features.2", method="gradcam", zero_flat=False)
    assert raw.maps.max() == pytest.approx(1.0)  # min-max stretching alone would paint a hot spot
    tumour, normal = patches(TUMOUR, 4, rng), patches(NORMAL, 4, rng)
    images, _ = quadrant_composites(tumour, normal, rng)
    assert not cam_maps(model, images, "features.2").flat.any()


def test_auto_method_follows_how_the_map_tiles_the_input() -> None:
    assert tiles_exactly(96, 6) and tiles_exactly(96, 12) and tiles_exactly(32, 8)
    assert not tiles_exactly(50, 4) and not tiles_exactly(50, 7) and not tiles_exactly(48, 16)
    from histoscan.models import SimpleCNN

    net = SimpleCNN(widths=(4, 4, 4, 4, 4)).eval()
    assert resolve_method("auto", net, "features.4.2", 96) == "gradcam"
    assert resolve_method("auto", net, "features.4.2", 50) == "integrated-gradcam"
    assert resolve_method("gradcam++", net, "features.4.2", 50) == "gradcam++"
    with pytest.raises(HistoscanInputError, match="method nope"):
        cam_maps(colour_model(), np.zeros((1, S, S, 3), np.uint8), "features.2", method="nope")


def test_explain_images_says_no_localised_evidence_for_a_blank_patch(tmp_path, monkeypatch) -> None:
    """The figure of a flat map carries the note; gradcam.npz keeps one (blank) map per input with the flag."""
    from run_fixtures import make_run

    import histoscan.gradcam.images as gc
    from histoscan.inference.predictor import TorchPredictor, load_predictor

    card = load_predictor(make_run(tmp_path / "run", image_size=S)).card
    predictor = TorchPredictor(colour_model(bias=-0.5), card)
    rng = np.random.default_rng(6)
    tumour, normal = patches(TUMOUR, 1, rng), patches(NORMAL, 1, rng)
    images = np.concatenate(
        [patches((245, 245, 245), 1, rng, noise=2), quadrant_composites(tumour, normal, rng)[0]]
    )
    captions: list[list[str]] = []
    real_render = gc.render_overlay
    monkeypatch.setattr(
        gc,
        "render_overlay",
        lambda img, cam, p, t, title, notes: (
            captions.append(list(notes)) or real_render(img, cam, p, t, title, notes)
        ),
    )
    gc.explain_images(predictor, images, ["blank", "composite"], tmp_path / "out", target_layer="features.2")
    assert captions[0][0] == gc.NO_EVIDENCE_NOTE and gc.NO_EVIDENCE_NOTE not in captions[1]
    saved = np.load(tmp_path / "out" / "gradcam.npz")
    assert list(saved["ids"]) == ["blank", "composite"] and saved["maps"].shape == (2, S, S)
    assert saved["localised"].tolist() == [False, True]
    assert float(saved["maps"][0].max()) == 0.0 and float(saved["maps"][1].max()) == 1.0
    assert str(saved["method"]) == "gradcam" and saved["spread"].shape == (2,)
