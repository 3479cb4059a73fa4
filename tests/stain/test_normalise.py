"""Stain normalisation on real idc-breast patches: fit, apply, blank patches, batching, configs, CLI, ONNX."""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tolerance import f32_tol

from histoscan.errors import HistoscanInputError
from histoscan.stain import (
    MacenkoNormaliser,
    ReinhardNormaliser,
    fit_stain,
    load_stain,
    normaliser_from_config,
    save_stain,
)
from histoscan.stain.normalise import _macenko_stains
from histoscan.stain.ops import optical_density, to_pixels

# two patients whose staining differs most among the first 40 (H+E vectors 36° apart, L*a*b* means 21 apart)
REFERENCE, TARGET = "12911", "12954"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def patients(idc_root: Path) -> dict[str, list[np.ndarray]]:
    """uint8 50 x 50 x 3 patches of the reference and target patients (first 16 of each)."""
    paths: dict[str, list[str]] = defaultdict(list)
    with open(idc_root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["patient"] in (REFERENCE, TARGET):
                paths[row["patient"]].append(row["path"])
    out = {}
    for patient, files in paths.items():
        imgs = [np.asarray(Image.open(idc_root / p).convert("RGB")) for p in files[:20]]
        out[patient] = [im for im in imgs if im.shape == (50, 50, 3)][:16]
        assert len(out[patient]) == 16
    return out


def _nchw(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _uint8(x: torch.Tensor) -> list[np.ndarray]:
    return list((x.permute(0, 2, 3, 1) * 255.0).round().byte().numpy())


def _angle_to(stains: np.ndarray, ref: np.ndarray) -> float:
    """Sum of the H and E vectors' angles (degrees) to the reference's."""
    return float(np.degrees(np.arccos(np.clip((stains * ref).sum(1), -1.0, 1.0))).sum())


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_fit_is_plain_json_and_sane(patients: dict, method: str) -> None:
    cfg = fit_stain(patients[REFERENCE][:6], method)
    assert json.loads(json.dumps(cfg)) == cfg  # plain floats / lists only
    assert cfg["method"] == method and cfg["reference"]["n_images"] == 6
    assert 3000 < cfg["reference"]["n_tissue_pixels"] <= 6 * 2500
    if method == "macenko":
        s = np.array(cfg["stain_matrix"])
        assert np.allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-6) and (s > 0).all()
        assert s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1]  # H absorbs more red, E more green
        assert all(0.3 < c < 5.0 for c in cfg["max_concentrations"])
    else:
        assert 20 < cfg["mean"][0] < 90 and cfg["mean"][1] > 5  # mid-light, pink (a* > 0)
        assert all(s > 1 for s in cfg["std"])


def test_macenko_stain_vectors_match_monai(patients: dict) -> None:
    # same pixels (MONAI's mask: every channel's OD > beta), same H and E vectors as MONAI's ExtractHEStains
    from monai.apps.pathology.transforms.stain.array import ExtractHEStains

    compared = 0
    for img in patients[REFERENCE][:4] + patients[TARGET][:4]:
        od = optical_density(to_pixels(_nchw([img])), 240.0)
        mask = (od > 0.15).all(-1)
        if mask.sum() < 200:  # MONAI needs tissue by its stricter rule (pale eosin patches have little)
            continue
        monai_he = ExtractHEStains()(img).T  # rows: its two stains, in its own order
        monai_he = monai_he[np.argsort(-monai_he[:, 0])]  # haematoxylin (more red absorbed) first
        ours = _macenko_stains(od, mask, 1.0)[0].numpy()
        np.testing.assert_allclose(ours, monai_he, atol=2e-3)
        compared += 1
    assert compared >= 3


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_apply_moves_stain_towards_reference(patients: dict, method: str) -> None:
    cfg = fit_stain(patients[REFERENCE][:6], method)
    norm = normaliser_from_config(cfg)
    x = _nchw(patients[TARGET])
    y = norm(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert norm.n_skipped == 0 and norm.n_seen == 16
    if method == "macenko":
        ref = np.array(cfg["stain_matrix"])
        before = [_angle_to(np.array(fit_stain(im, method)["stain_matrix"]), ref) for im in patients[TARGET]]
        after = [_angle_to(np.array(fit_stain(im, method)["stain_matrix"]), ref) for im in _uint8(y)]
    else:
        ref = np.array(cfg["mean"])
        before = [np.linalg.norm(np.array(fit_stain(im, method)["mean"]) - ref) for im in patients[TARGET]]
        after = [np.linalg.norm(np.array(fit_stain(im, method)["mean"]) - ref) for im in _uint8(y)]
    assert np.mean(after) < 0.5 * np.mean(before), (np.mean(before), np.mean(after))


def test_reinhard_on_its_own_reference_is_identity(patients: dict) -> None:
    img = patients[REFERENCE][0]
    x = _nchw([img])
    y = normaliser_from_config(fit_stain(img, "reinhard"))(x)
    assert float((y - x).abs().max()) < 2e-3


def test_macenko_on_its_own_reference_is_near_identity(patients: dict) -> None:
    img = patients[REFERENCE][0]
    x = _nchw([img])
    y = normaliser_from_config(fit_stain(img, "macenko"))(x)
    assert float((y - x).abs().mean()) < 0.02  # only the projection onto the H/E plane and clamping differ


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_blank_and_black_patches_pass_through_counted(
    patients: dict, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    norm = normaliser_from_config(fit_stain(patients[REFERENCE][:6], method))
    white, black = np.full((50, 50, 3), 255, np.uint8), np.zeros((50, 50, 3), np.uint8)
    nearly_white = np.full((50, 50, 3), 235, np.uint8)  # glass: OD ~0.02
    x = _nchw([white, patients[TARGET][0], black, nearly_white])
    with caplog.at_level(logging.WARNING, logger="histoscan.stain.normalise"):
        y = norm(x)
        norm(_nchw([white]))  # a second batch: counted, no second warning line
        assert not caplog.records  # no line per batch
        line = norm.report()
        assert norm.report() is None  # nothing new since
    assert torch.isfinite(y).all()
    for i in (0, 2, 3):
        assert torch.equal(y[i], x[i])
    assert not torch.equal(y[1], x[1])
    assert norm.n_skipped == 4 and norm.n_seen == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4 of 5 patches" in warnings[0].getMessage() == line
    y = norm(_nchw([white, white]))  # a batch of nothing but background
    assert torch.equal(y, _nchw([white, white])) and norm.n_skipped == 6


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_batch_equals_per_image(patients: dict, method: str) -> None:
    norm = normaliser_from_config(fit_stain(patients[REFERENCE][:6], method))
    x = _nchw(patients[TARGET][:8] + [np.full((50, 50, 3), 255, np.uint8)])
    batched = norm(x)
    single = torch.cat([norm(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(batched, single, rtol=0, atol=f32_tol(single, terms=2**14))


def test_channels_last_and_empty_batch(patients: dict) -> None:
    norm = normaliser_from_config(fit_stain(patients[REFERENCE][:6], "macenko"))
    x = _nchw(patients[TARGET][:4])
    y = norm(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, norm(x), rtol=0, atol=f32_tol(y, terms=2**14))
    assert norm(x[:0]).shape == (0, 3, 50, 50)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_round_trip(patients: dict, method: str, suffix: str, tmp_path: Path) -> None:
    cfg = fit_stain(patients[REFERENCE][:6], method)
    path = save_stain(cfg, tmp_path / f"stain{suffix}")
    loaded = load_stain(path)
    assert loaded == cfg
    a, b = normaliser_from_config(cfg), normaliser_from_config(loaded)
    assert isinstance(a, MacenkoNormaliser if method == "macenko" else ReinhardNormaliser)
    x = _nchw(patients[TARGET][:4])
    assert torch.equal(a(x), b(x))
    again = a.to_config()  # the module's own config (float32 buffers) rebuilds the same module
    assert set(again) == set(cfg) - {"reference"} and again["method"] == method
    for k in set(again) - {"method"}:
        np.testing.assert_allclose(again[k], cfg[k], rtol=1e-6, err_msg=k)
    assert torch.equal(normaliser_from_config(again)(x), a(x))


def test_tissue_statistics_are_over_tissue_only(patients: dict) -> None:
    # padding a patch with white background leaves its Reinhard reference unchanged
    img = patients[REFERENCE][1]
    padded = np.pad(img, ((0, 50), (0, 0), (0, 0)), constant_values=255)
    a, b = fit_stain(img, "reinhard"), fit_stain(padded, "reinhard")
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-4)


def test_bad_inputs_name_the_field(tmp_path: Path, patients: dict) -> None:
    white = np.full((8, 50, 50, 3), 255, np.uint8)
    with pytest.raises(HistoscanInputError, match="stain reference: only 0 tissue pixels"):
        fit_stain(white)
    with pytest.raises(HistoscanInputError, match="stain method"):
        fit_stain(patients[REFERENCE][:2], "vahadane")  # type: ignore[arg-type]
    with pytest.raises(HistoscanInputError, match="uint8"):
        fit_stain(np.zeros((2, 8, 8, 3), np.float32))
    good = fit_stain(patients[REFERENCE][:2])
    with pytest.raises(HistoscanInputError, match=r"stain\.stain_matrix"):
        normaliser_from_config({**good, "stain_matrix": [[1.0, 0.0, 0.0]]})
    with pytest.raises(HistoscanInputError, match=r"stain\.max_concentrations"):
        normaliser_from_config({**good, "max_concentrations": [1.0, -1.0]})
    with pytest.raises(HistoscanInputError, match=r"stain\.method"):
        normaliser_from_config({**good, "method": "macenk"})
    with pytest.raises(HistoscanInputError, match="unknown field.*colour"):
        normaliser_from_config({**good, "colour": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HistoscanInputError, match="bad.json: not valid"):
        load_stain(bad)
    bad.write_text(json.dumps({**good, "std": [1, 2, 3]}))
    with pytest.raises(HistoscanInputError, match="bad.json: stain: unknown field"):
        load_stain(bad)
    with pytest.raises(HistoscanInputError, match="missing.json: stain file not found"):
        load_stain(tmp_path / "missing.json")


def test_onnx_export_matches_torch(patients: dict, tmp_path: Path) -> None:
    # the normaliser sits inside PatchClassifier, so `histoscan export` must be able to trace it
    ort = pytest.importorskip("onnxruntime")
    norm = normaliser_from_config(fit_stain(patients[REFERENCE][:6], "macenko")).eval()
    x = _nchw(patients[TARGET][:4])
    path = tmp_path / "stain.onnx"
    torch.onnx.export(
        norm, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = _nchw(patients[TARGET][4:10])
    want = norm(x2).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x2.numpy()})[0], want, rtol=0, atol=f32_tol(want, terms=2**14))


def test_cli_fit_and_apply(idc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from histoscan.cli import main

    folder = idc_root / "images" / REFERENCE
    out = tmp_path / "stain.json"
    assert (
        main(["stain", "fit", str(folder), "--method", "reinhard", "--out", str(out), "--max-images", "5"])
        == 0
    )
    cfg = load_stain(out)
    assert cfg["method"] == "reinhard" and cfg["reference"]["n_images"] == 5
    assert f"--stain {out}" in capsys.readouterr().out
    target = sorted((idc_root / "images" / TARGET).rglob("*.png"))[:3]
    assert main(["stain", "apply", *map(str, target), "--stain", str(out), "--out", str(tmp_path / "n")]) == 0
    written = sorted((tmp_path / "n").glob("*.png"))
    assert [p.name for p in written] == sorted(p.name for p in target)
    assert np.asarray(Image.open(written[0])).shape == np.asarray(Image.open(target[0]).convert("RGB")).shape
    assert main(["stain", "fit", str(tmp_path / "nope"), "--out", str(tmp_path / "other.json")]) == 2
    assert "nope: image file not found" in capsys.readouterr().err
