"""Grad-CAM: map shape and range, localisation, the weight-randomisation check, class choice, outputs."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_fixtures import make_run
from tolerance import f32_tol, prob_tol

from histoscan.cli import main
from histoscan.data.images import decode_image, fit_image
from histoscan.errors import HistoscanInputError
from histoscan.explain.gradcam import fit_note
from histoscan.gradcam.images import check_target_layer, explain_images, gradcam
from histoscan.inference.predictor import load_predictor
from histoscan.models import SimpleCNN, target_layer_name
from histoscan.models.classifier import PatchClassifier

S, Q = 32, 8  # synthetic images: S x S noise, positives carry a bright Q x Q square somewhere
LAYER = "features.2.2"  # pre-pool ReLU of the third block: an 8 x 8 map at 32 px


def squares(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise patches, every second one with a bright square: (images, labels, square masks)."""
    x = rng.integers(90, 150, (n, S, S, 3)).astype(np.uint8)
    y = np.arange(n) % 2
    masks = np.zeros((n, S, S), bool)
    for i in np.flatnonzero(y):
        r, c = rng.integers(2, S - Q - 2, 2)
        x[i, r : r + Q, c : c + Q] = 250
        masks[i, r : r + Q, c : c + Q] = True
    return x, y, masks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained() -> PatchClassifier:
    """A small CNN fitted for a few steps on the square task (it learns it perfectly)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clf = PatchClassifier(SimpleCNN(dropout=0.0, widths=(8, 16, 16, 16, 16)))
    opt = torch.optim.Adam(clf.parameters(), 1e-2)
    for _ in range(25):
        x, y, _ = squares(32, rng)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            clf(torch.as_tensor(x)), torch.as_tensor(y).float()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return squares(16, np.random.default_rng(1))


def inside_outside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean map value on the square over the mean elsewhere, per image."""
    return np.array([m[k].mean() / max(m[~k].mean(), 1e-6) for m, k in zip(maps, masks, strict=True)])


def test_maps_have_image_size_unit_range_and_peak_on_the_square(trained, test_set) -> None:
    x, y, masks = test_set
    maps, probs = gradcam(trained, x, LAYER)
    assert maps.shape == (16, S, S) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.array_equal(probs >= 0.5, y == 1)  # the model solved the task
    pos = y == 1
    assert inside_outside(maps[pos], masks[pos]).min() > 2.0
    peaks = [k[np.unravel_index(m.argmax(), m.shape)] for m, k in zip(maps[pos], masks[pos], strict=True)]
    assert np.mean(peaks) >= 0.75  # pointing game


def test_maps_change_when_weights_are_randomised(trained, test_set) -> None:
    """Adebayo et al. 2018: a map that survives re-initialising the weights does not explain the model."""
    x, y, masks = test_set
    maps, _ = gradcam(trained, x, LAYER)
    randomised = copy.deepcopy(trained)
    torch.manual_seed(1)
    for m in randomised.modules():
        if m is not randomised and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    rand_maps, _ = gradcam(randomised, x, LAYER)
    pos = y == 1
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps[pos], rand_maps[pos], strict=True)]
    assert np.mean(np.nan_to_num(corr)) < 0.5  # a constant (all-zero) random map counts as uncorrelated
    assert np.median(inside_outside(rand_maps[pos], masks[pos])) < 2.0


def test_negative_prediction_explains_the_negative_logit(trained, test_set) -> None:
    x, y, masks = test_set
    pos = y == 1
    tumour_maps, _ = gradcam(trained, x[pos], LAYER, threshold=0.5)  # predicted tumour: the positive logit
    normal_maps, _ = gradcam(trained, x[pos], LAYER, threshold=1.1)  # nothing reaches 1.1: all "normal"
    assert inside_outside(tumour_maps, masks[pos]).min() > 2.0
    assert inside_outside(normal_maps, masks[pos]).max() < 1.0  # evidence for "normal" lies off the square
    # in a mixed batch each image gets the map of its own predicted class
    mixed, probs = gradcam(trained, x, LAYER)
    one_by_one = np.concatenate([gradcam(trained, x[i : i + 1], LAYER)[0] for i in range(len(x))])
    # maps are scaled to [0, 1]: the rounding of the gradients' reordered sums, then of the upsampling
    np.testing.assert_allclose(mixed, one_by_one, rtol=0, atol=f32_tol(1.0, terms=2**14))
    np.testing.assert_allclose(mixed[pos], tumour_maps, rtol=0, atol=f32_tol(1.0, terms=2**14))


def test_unknown_or_non_spatial_target_layer_is_a_user_error(trained) -> None:
    with pytest.raises(HistoscanInputError, match=r"--target-layer layer9: is not a layer .*features\.4"):
        check_target_layer(trained.net, "layer9", S, "simple-cnn")
    with pytest.raises(HistoscanInputError, match="classifier.1: has no spatial"):
        gradcam(trained, np.zeros((1, S, S, 3), np.uint8), "classifier.1")


def idc_files(idc_root: Path, n: int) -> list[Path]:
    with open(idc_root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [idc_root / r["path"] for r in rows[:: len(rows) // n][:n]]


def test_explain_images_writes_overlays_and_probabilities(idc_root: Path, tmp_path: Path) -> None:
    loaded = load_predictor(make_run(tmp_path / "run"))
    files = idc_files(idc_root, 3)
    images = np.stack([fit_image(decode_image(f, str(f))[0], 50, "pad") for f in files])
    ids = [f.stem for f in files]
    paths = explain_images(loaded, images, ids, tmp_path / "out")
    assert paths == [tmp_path / "out" / f"{i}_gradcam.png" for i in ids]
    with Image.open(paths[0]) as im:
        assert im.mode == "RGB" and im.width >= 2 * 256 and im.height >= 256  # 50 px patch x 6, side by side
    with open(tmp_path / "out" / "probabilities.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = loaded.predict_proba(images)
    assert [r["id"] for r in rows] == ids
    np.testing.assert_allclose(  # probabilities.csv keeps 6 decimals: half a unit of the last one, + rounding
        [float(r["probability"]) for r in rows], expected, rtol=0, atol=5e-7 + prob_tol(loaded.predict_logits(images))
    )
    assert [int(r["label"]) for r in rows] == [int(p >= 0.5) for p in expected]
    saved = np.load(tmp_path / "out" / "gradcam.npz")
    assert str(saved["target_layer"]) == target_layer_name("simple-cnn", loaded.classifier.net)


def test_gradcam_npz_keeps_one_map_per_input(idc_root: Path, tmp_path: Path) -> None:
    """N inputs (more than one Grad-CAM batch): N maps of the input's size, in input order, with their ids."""
    loaded = load_predictor(make_run(tmp_path / "run"))
    files = idc_files(idc_root, 5)
    images = np.stack([fit_image(decode_image(f, str(f))[0], 50, "pad") for f in files])
    ids = [f"p{i}" for i in range(5)]
    explain_images(loaded, images, ids, tmp_path / "out", batch_size=2)
    saved = np.load(tmp_path / "out" / "gradcam.npz")
    assert list(saved["ids"]) == ids
    assert saved["maps"].shape == (5, 50, 50) and saved["maps"].dtype == np.float16
    for key in ("probabilities", "logits", "spread", "localised", "notes"):
        assert saved[key].shape == (5,), key
    # each input's map is its own: the same as explaining it alone, and blank exactly where not localised
    alone = [
        gradcam(loaded.classifier, images[i : i + 1], str(saved["target_layer"]))[0][0] for i in range(5)
    ]
    # stored as float16 (maps in [0, 1]): half a float16 ulp at 1 (4.9e-4) plus the float32 rounding above
    half_ulp = float(np.finfo(np.float16).eps) / 2
    np.testing.assert_allclose(
        saved["maps"].astype(np.float32), np.stack(alone), rtol=0, atol=half_ulp + f32_tol(1.0, terms=2**14)
    )
    assert all((m.max() == 0) == (not ok) for m, ok in zip(saved["maps"], saved["localised"], strict=True))
    assert str(saved["method"]) == "integrated-gradcam"  # simple-cnn at 50 px: "auto" (docs/benchmarks.md)


def test_cli_explains_files_and_folders(idc_root: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    files = idc_files(idc_root, 3)
    folder = tmp_path / "patches"
    folder.mkdir()
    for f in files[1:]:
        shutil.copy(f, folder / f.name)
    out = tmp_path / "out"
    assert main(["explain", str(run), str(files[0]), str(folder), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*_gradcam.png")) == sorted(f"{f.stem}_gradcam.png" for f in files)
    assert main(["explain", str(run), str(files[0]), "--out", str(out), "--target-layer", "nope"]) == 2
    assert main(["explain", str(run), str(tmp_path / "missing.png"), "--out", str(out)]) == 2


def test_caption_says_what_the_model_saw_and_warns_on_colour(
    idc_root: Path, shared_data: Path, tmp_path: Path, capsys
) -> None:
    """A 96 px upload to a 50 px model: the figure says it shows the centre crop; a grey patch: a warning."""
    from histoscan.stain.domain import colour_stats

    train = np.stack([fit_image(decode_image(f, str(f))[0], 50, "pad") for f in idc_files(idc_root, 200)])
    run = make_run(tmp_path / "run", data_json={"colour": colour_stats(train)})
    hcd = sorted((shared_data / "kaggle-hcd-test").glob("*.tif"))[0]
    idc = idc_files(idc_root, 1)[0]
    out = tmp_path / "out"
    assert main(["explain", str(run), str(hcd), str(idc), "--out", str(out)]) == 0
    assert "warning:" not in capsys.readouterr().out
    saved = np.load(out / "gradcam.npz")
    assert list(saved["notes"]) == [
        "the model saw only the centre 50x50 px crop of this 96x96 px image (fit: pad)",
        "",
    ]
    assert len(saved["warnings"]) == 0
    assert fit_note(42, 50, 50, "pad") == "this 50x42 px image was reflect-padded to the model's 50x50 px"
    assert fit_note(96, 96, 50, "resize", "grey") == (
        "the model saw this 96x96 px image resized to 50x50 px (fit: resize); converted on reading (grey)"
    )
    grey_png = tmp_path / "grey.png"
    Image.fromarray(np.asarray(Image.open(idc).convert("L").convert("RGB"))).save(grey_png)
    assert main(["explain", str(run), str(grey_png), "--out", str(tmp_path / "g")]) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(printed) == 1 and printed[0].startswith("warning: colour: the images' stain colour lies")
    assert list(np.load(tmp_path / "g" / "gradcam.npz")["warnings"]) == [printed[0].removeprefix("warning: ")]
