"""Domain checks: resolution and colour rules on real patches, stored statistics, warnings in every command."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from run_fixtures import idc_store, make_run

from histoscan.cli import main
from histoscan.data.images import decode_image, fit_image
from histoscan.evaluation.evaluate import evaluate
from histoscan.inference.predict import predict
from histoscan.inference.predictor import load_predictor
from histoscan.stain.domain import (
    COLOUR_LIMIT,
    check_colour,
    check_resolution,
    colour_distance,
    colour_stats,
    patch_colours,
    training_colour_stats,
)
from histoscan.stain.ops import od_table, tissue_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _load(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([fit_image(decode_image(p, str(p))[0], size, "pad") for p in paths])


@pytest.fixture(scope="module")
def idc(idc_root: Path) -> dict[str, np.ndarray]:
    """idc-breast patches: 600 from the first 130 patients ("train"), 300 from the other 65 ("held out")."""
    with (idc_root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient"] for r in rows})
    train = set(patients[:130])
    rng = np.random.default_rng(0)
    tr = [idc_root / r["path"] for r in rows if r["patient"] in train]
    ho = [idc_root / r["path"] for r in rows if r["patient"] not in train]
    return {
        "train": _load([tr[i] for i in rng.choice(len(tr), 600, replace=False)], 50),
        "held_out": _load([ho[i] for i in rng.choice(len(ho), 300, replace=False)], 50),
    }


@pytest.fixture(scope="module")
def stats(idc) -> dict:
    return colour_stats(idc["train"])


def grey(images: np.ndarray) -> np.ndarray:
    """The same patches in greyscale (no stain hue left)."""
    return images.mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)


def blue(images: np.ndarray) -> np.ndarray:
    """The same patches with a blue cast (red and green absorbed more, e.g. another stain or scanner)."""
    return np.clip(images * np.array([0.55, 0.7, 1.1]), 0, 255).astype(np.uint8)


def test_check_resolution_25_percent_both_ways() -> None:
    assert check_resolution(4.0, 4.0) is None and check_resolution(1.0, 1.24) is None
    assert check_resolution(1.24, 1.0) is None and check_resolution(None, 4.0) is None
    assert check_resolution(0.972, None) is None
    w = check_resolution(0.972, 4.0)
    assert w.startswith("resolution: the patches are at 0.972 µm/px") and "trained at 4 µm/px" in w
    assert "4.1x finer" in w and "\n" not in w
    assert "coarser" in check_resolution(1.3, 1.0, "tiles") and "the tiles are at 1.3" in check_resolution(
        1.3, 1.0, "tiles"
    )


def test_patch_colours_columns_and_blank_patches() -> None:
    x = np.full((3, 20, 20, 3), 250, np.uint8)  # glass
    x[1] = (150, 80, 160)  # stained
    x[2, :1] = (150, 80, 160)  # 1 row of 20: 5 % stained, just enough
    cols = patch_colours(x)
    assert cols.shape == (3, 6) and cols.dtype == np.float32
    assert np.isnan(cols[0, :3]).all() and not np.isnan(cols[1:, :3]).any()
    np.testing.assert_allclose(cols[1, 3:], (150, 80, 160))
    np.testing.assert_allclose(cols[1, :2], cols[2, :2], atol=1e-6)  # the hue does not depend on the amount
    assert colour_distance(cols[:1], {"method": "od-share-v1", "mean": [0, 0, 0], "cov": np.eye(3)}) is None


def test_colour_rule_on_real_patches(idc, stats, shared_data: Path) -> None:
    assert stats["n"] >= 550 and len(stats["mean"]) == 3 and np.shape(stats["cov"]) == (3, 3)
    d_idc = colour_distance(patch_colours(idc["held_out"]), stats)
    assert d_idc < 0.5 and check_colour(idc["held_out"], stats) is None  # other patients, same domain
    for shifted, low in ((grey(idc["held_out"]), 4.3), (blue(idc["held_out"]), 6.0)):
        d = colour_distance(patch_colours(shifted), stats)
        assert d > low
        w = check_colour(shifted, stats)
        assert w.startswith("colour: the patches' stain colour lies") and f"{d:.1f} SD" in w
    # lymph node (hcd-train) against breast statistics: another organ and lab, yet an H&E hue within the
    # training spread (1.6 SD on this sample): no warning — the rule flags colour, not tissue type
    hcd = sorted((shared_data / "hcd-train" / "train").glob("*.tif"))[:300]
    d_hcd = colour_distance(patch_colours(_load(hcd, 96)), stats)
    assert 1.0 < d_hcd < COLOUR_LIMIT
    one_grey = grey(idc["held_out"][:1])  # a single patch is judged alone
    assert check_colour(one_grey, stats) is not None and check_colour(idc["held_out"][:1], stats) is None


def test_train_stores_colour_statistics(idc_root: Path, tmp_path: Path) -> None:
    from histoscan.training.train import _data_summary

    store = idc_store(idc_root, tmp_path, patients=4, per_class=4)
    split = np.array(["train"] * 20 + ["val"] * 6 + ["test"] * 6)
    info = _data_summary(store, split)
    assert info["colour"]["method"] == "od-share-v1" and info["colour"]["n"] == 20
    assert json.loads(json.dumps(info))["colour"] == info["colour"]  # plain JSON for data.json
    assert colour_distance(patch_colours(store.images), info["colour"]) < 1.0


@pytest.fixture(scope="module")
def idc_run(idc_root: Path, stats: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 50 px run at 4 µm/px whose data.json holds idc-breast colour statistics, and its store."""
    tmp = tmp_path_factory.mktemp("domain")
    store = idc_store(idc_root, tmp, patients=4, per_class=3)
    data = {"store": str(store.path), "checksum": store.meta["checksum"], "mpp": 4.0, "colour": stats}
    return make_run(tmp / "run", store=store, data_json=data), store.path


def test_predict_warns_for_patches_at_another_resolution(
    idc_run, shared_data: Path, tmp_path: Path, capsys
) -> None:
    run, store = idc_run
    s = predict(run, shared_data / "kaggle-hcd-test", tmp_path / "p.csv")
    [w] = s["warnings"]  # 96 px HCD tiles at 0.972 µm/px for a 4 µm/px model: resolution, not colour
    assert w.startswith("resolution:") and "0.972 µm/px" in w and "4 µm/px" in w
    assert s["colour_distance"] < COLOUR_LIMIT
    with (tmp_path / "p.csv").open() as f:
        assert next(csv.reader(f)) == ["id", "probability", "label", "fitted"]  # the warning adds no column
    assert predict(run, store, tmp_path / "q.csv")["warnings"] == []  # idc on idc
    assert (
        main(
            [
                "predict",
                str(run),
                "--data",
                str(shared_data / "kaggle-hcd-test"),
                "--out",
                str(tmp_path / "c.csv"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("warning: resolution: the patches are at 0.972 µm/px") == 1


def test_predict_warns_for_grey_patches(idc_run, idc, tmp_path: Path, capsys) -> None:
    run, _ = idc_run
    folder = tmp_path / "grey"
    folder.mkdir()
    for i, img in enumerate(grey(idc["held_out"][:12])):
        Image.fromarray(img).save(folder / f"g{i}.png")
    assert main(["predict", str(run), "--data", str(folder), "--out", str(tmp_path / "g.csv")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("warning: colour: the patches' stain colour lies")


def test_evaluate_records_warnings(idc_root: Path, stats: dict, tmp_path: Path, capsys) -> None:
    store = idc_store(idc_root, tmp_path, patients=4, per_class=3)
    run = make_run(tmp_path / "run", mpp=0.972, data_json={"colour": stats})  # a PCam-resolution model
    m = evaluate(run, store.path, tmp_path / "ev", n_boot=0)
    [w] = m["warnings"]
    assert "4 µm/px" in w and "0.972 µm/px" in w and f"Warning: {w}" in m["notes"]
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["warnings"] == [w] and saved["colour_distance"] < COLOUR_LIMIT
    assert (
        main(
            ["evaluate", str(run), "--data", str(store.path), "--out", str(tmp_path / "ev2"), "--n-boot", "0"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("resolution: the patches are at 4 µm/px") == 1 and "warning: resolution" in out


def test_no_statistics_no_colour_check(idc_run, idc, tmp_path: Path) -> None:
    run, _ = idc_run
    ckpt = tmp_path / "bare.ckpt"  # a checkpoint outside its run: no data.json to read
    shutil.copy(run / "checkpoints" / "best.ckpt", ckpt)
    assert training_colour_stats(load_predictor(ckpt)) is None
    assert training_colour_stats(load_predictor(run))["method"] == "od-share-v1"
    assert check_colour(grey(idc["held_out"]), None) is None


def test_colour_statistics_unchanged_by_the_move_to_stain(idc, stats) -> None:
    """The colour check's numbers on real patches are those of its first implementation (inference/domain.py,
    its own OD lookup), now that the optical density and stained-pixel rule are stain.ops' (io 256, "any")."""
    first = patch_colours(idc["train"][:3])
    np.testing.assert_allclose(
        first,
        [
            [0.240226224, 0.325075537, -0.0864653215, 230.869995, 218.565994, 224.698807],
            [0.211927965, 0.291329980, 0.347802788, 198.348404, 145.147598, 179.670802],
            [0.247215316, 0.276186200, 0.552100003, 167.377594, 112.984802, 158.299606],
        ],
        rtol=2e-6,
    )
    assert stats["n"] == 600
    np.testing.assert_allclose(stats["mean"], [0.19946, 0.314937, 0.205562], rtol=2e-5)
    np.testing.assert_allclose(stats["std"], [0.0532501, 0.0315367, 0.337619], rtol=2e-5)
    np.testing.assert_allclose(
        stats["cov"],
        [
            [0.0028403, -0.00125063, 0.0074903],
            [-0.00125063, 0.000996221, -0.0050876],
            [0.0074903, -0.0050876, 0.114177],
        ],
        rtol=2e-5,
    )
    assert colour_distance(patch_colours(idc["held_out"]), stats) == pytest.approx(0.200786, abs=2e-5)
    white = np.full((2, 50, 50, 3), 255, np.uint8)
    assert np.isnan(patch_colours(white)[:, :3]).all()  # no stained pixel: no colour to compare


def test_optical_density_table_is_the_stain_formula() -> None:
    """The uint8 lookup is stain.ops.optical_density at io 256: -log((I + 1) / 256), 0 for white."""
    table = od_table(256.0)
    assert table.dtype == np.float32 and table[255] == 0.0
    np.testing.assert_allclose(table, -np.log((np.arange(256) + 1) / 256), rtol=1e-6)
    od = torch.tensor([[[0.2, 0.1, 0.1], [0.1, 0.1, 0.1], [0.3, 0.3, 0.3]]])
    assert tissue_mask(od, 0.15, rule="any").tolist() == [[True, False, True]]
    assert tissue_mask(od, 0.15, rule="mean").tolist() == [[False, False, True]]
    assert tissue_mask(od, 0.15, od_max=0.25, rule="any").tolist() == [[True, False, False]]
