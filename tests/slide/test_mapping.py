"""Whole-slide maps: region geometry, tissue mask, TIFF reading, outputs on the shared slides, bad input."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from run_fixtures import make_run

from histoscan.cli import main
from histoscan.errors import HistoscanInputError
from histoscan.inference.predictor import Predictor, load_predictor
from histoscan.slide.io import _signed_area, grid_rings, open_slide
from histoscan.slide.mapping import (
    SlideOptions,
    map_slide,
    plan_grid,
    stream_tiles,
)
from histoscan.stain.tissue import thumbnail_tissue_mask

PINK, PURPLE = (230, 150, 200), (120, 60, 160)


@pytest.fixture(scope="module")
def run32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained simple-cnn at 32 px, patches at 4 µm/px (so the shared slides make few tiles)."""
    torch.set_num_threads(2)
    return make_run(tmp_path_factory.mktemp("run") / "run32", image_size=32, mpp=4.0)


@pytest.fixture(scope="module")
def model32(run32: Path):
    return load_predictor(run32)


@pytest.fixture(scope="module")
def slides(shared_data: Path) -> Path:
    return shared_data / "slides"


class DarknessPredictor(Predictor):
    """Known pattern: tiles darker than mid-grey are 'tumour' (logit +-6); the card of a real 32 px run."""

    can_explain = True  # --explain runs a recording explain_images in its place (cmu_map)

    def __init__(self, card):
        self.card = card

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        return np.where(images.reshape(len(images), -1).mean(1) < 170, 6.0, -6.0)


@pytest.fixture(scope="module")
def darkness(model32) -> DarknessPredictor:
    return DarknessPredictor(model32.card)


def _polygon_area(coords: list) -> float:
    return _signed_area(coords[0]) + sum(_signed_area(h) for h in coords[1:])


def _check_rings(coords: list) -> None:
    for i, ring in enumerate(coords):
        assert ring[0] == ring[-1]  # closed
        assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # no repeated vertex
        assert (_signed_area(ring) > 0) == (i == 0)  # outer counter-clockwise (RFC 7946), holes clockwise


def test_grid_rings_exact_area_holes_and_pinch() -> None:
    mask = np.zeros((7, 8), bool)
    mask[1:6, 1:6] = True
    mask[2, 2] = mask[3, 3] = False  # two holes touching at a corner
    mask[4, 4] = False  # a third hole, diagonal to the second
    mask[0, 7] = True  # a separate single tile
    mask[6, 6] = True  # diagonal to the block: a separate 4-connected component
    regions = grid_rings(mask)
    assert len(regions) == 3
    for _sl, comp, rings in regions:
        _check_rings(rings)
        assert _polygon_area(rings) == comp.sum()
    big = max(regions, key=lambda r: r[1].sum())
    assert big[1].sum() == 22 and len(big[2]) == 4  # shell + three holes
    assert _signed_area(big[2][0]) == 25


def test_grid_rings_pinched_shell() -> None:
    # a ring of cells whose inner background touches the outside only at a corner (1, 1)
    mask = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 1]], bool)
    [(_, comp, rings)] = grid_rings(mask)
    _check_rings(rings)
    assert len(rings) == 2 and _signed_area(rings[0]) == 8 and _signed_area(rings[1]) == -1
    assert (1, 1) in rings[0] and (1, 1) in rings[1]  # hole touches the shell at one point (valid)


def test_tissue_mask_blob_and_blank() -> None:
    img = np.full((200, 300, 3), 240, np.uint8)
    img[50:150, 100:250] = PINK
    mask = thumbnail_tissue_mask(img)
    assert mask[60:140, 110:240].all() and not mask[:40].any() and not mask[:, :90].any()
    assert abs(mask.sum() - 100 * 150) < 0.02 * 100 * 150
    assert not thumbnail_tissue_mask(np.full((100, 100, 3), 245, np.uint8)).any()


def _write_tiff(
    path: Path, img: np.ndarray, mpp: float | None, tile: int | None = 64, levels: int = 1
) -> None:
    kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(tile, tile) if tile else None, photometric="rgb", subifds=levels - 1, **kw)
        for i in range(1, levels):
            tw.write(
                img[:: 2**i, :: 2**i],
                tile=(tile, tile) if tile else None,
                photometric="rgb",
                subfiletype=1,
                **kw,
            )


@pytest.mark.parametrize("tile", [64, None])
def test_tiff_reader_regions_are_exact(tmp_path: Path, tile: int | None) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 410, 3), dtype=np.uint8)
    path = tmp_path / "s.tif"
    _write_tiff(path, img, 0.5, tile, levels=2 if tile else 1)
    reader = open_slide(path)
    assert reader.backend == "tiffslide"  # OpenSlide cannot read strips, nor see SubIFD pyramids
    assert reader.mpp == pytest.approx(0.5)
    assert reader.dimensions == (410, 300)
    np.testing.assert_array_equal(reader.read_region(37, 101, 0, (150, 90)), img[101:191, 37:187])
    edge = reader.read_region(380, 280, 0, (50, 40))  # runs off the image: white beyond
    np.testing.assert_array_equal(edge[:20, :30], img[280:, 380:])
    assert (edge[20:] == 255).all() and (edge[:, 30:] == 255).all()
    if tile:
        assert len(reader.level_downsamples) == 2 and reader.level_downsamples[1] == pytest.approx(2.0)
        np.testing.assert_array_equal(reader.read_region(40, 60, 1, (50, 30)), img[::2, ::2][30:60, 20:70])
    assert open_slide(path, mpp=0.25).mpp == 0.25  # --mpp overrides the slide's metadata
    reader.close()


def test_plan_grid_levels(slides: Path) -> None:
    cmu = open_slide(slides / "cmu-1-small-region.svs")
    assert cmu.mpp == pytest.approx(0.499)
    g = plan_grid(cmu, 96, 0.972)
    assert g.level == 0 and g.read_size == 187 and (g.rows, g.cols) == (16, 12)
    g = plan_grid(cmu, 96, 0.972, stride=48)
    assert g.stride0 == pytest.approx(g.tile0 / 2) and g.cell_offset == pytest.approx(g.tile0 / 4)
    tcga = open_slide(slides / "tcga-cr-7395-01a-01-ts1.svs")
    assert tcga.mpp is None  # this slide records no µm/px
    tcga = open_slide(slides / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.25)
    g = plan_grid(tcga, 96, 0.972)  # 3.9x: level 1 (2.0005x), resampled from 187 px to 96
    assert g.level == 1 and g.read_size == round(96 * 0.972 / 0.25 / 2.0005055500659967)
    assert plan_grid(tcga, 96, 0.3).level == 0
    with pytest.raises(HistoscanInputError, match="--level"):
        plan_grid(tcga, 96, 0.972, level=2)


def test_stream_tiles_order_and_errors(slides: Path) -> None:
    reader = open_slide(slides / "cmu-1-small-region.svs")
    grid = plan_grid(reader, 32, 4.0)
    rc = np.argwhere(np.ones((grid.rows, grid.cols), bool))
    xy = grid.origins(rc)
    batches = list(stream_tiles(reader, grid, xy, batch_size=10, read_threads=2, prefetch=2))
    assert [s for s, _ in batches] == list(range(0, len(xy), 10))
    allt = np.concatenate([b for _, b in batches])
    assert allt.shape == (len(xy), 32, 32, 3) and allt.dtype == np.uint8
    one = reader.read_region(int(xy[5][0]), int(xy[5][1]), 0, (grid.read_size, grid.read_size))
    assert abs(float(one.mean()) - float(allt[5].mean())) < 3  # the resampled tile is that region
    bad = xy.copy()
    reader.close()
    with pytest.raises(Exception):  # noqa: B017 - a reader failure reaches the consumer
        list(stream_tiles(reader, grid, bad, batch_size=10))


@pytest.fixture(scope="module")
def cmu_map(darkness, slides: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, list]:
    """One map of cmu-1-small-region: the darkness pattern, tiles not overlapping nor smoothed (heatmap cells =
    tiles), --explain 3 (a recording explain_images)."""
    calls = []

    def explain_images(model, images, ids, out_dir, target_layer=None, **captions):
        calls.append((images, ids))
        return [out_dir / f"{i}_gradcam.png" for i in ids]

    out = tmp_path_factory.mktemp("cmu") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(
            sys.modules, "histoscan.gradcam.images", types.SimpleNamespace(explain_images=explain_images)
        )
        opts = SlideOptions(explain=3, stride=32, smooth=0)
        s = map_slide(darkness, slides / "cmu-1-small-region.svs", out, opts, False)
    return s, out, calls


def test_map_slide_cmu_outputs_and_regions(cmu_map) -> None:
    s, out, _ = cmu_map
    for name in ("heatmap.npy", "heatmap.png", "overlay.png", "tiles.csv", "regions.geojson", "summary.json"):
        assert (out / name).stat().st_size > 0
    heat = np.load(out / "heatmap.npy")
    assert heat.dtype == np.float32 and heat.shape == (s["grid"][0], s["grid"][1]) == (12, 9)
    assert np.isfinite(heat).sum() == s["n_tissue_tiles"] > 0 and np.isnan(heat).sum() > 0
    rows = list(csv.DictReader((out / "tiles.csv").open()))
    assert len(rows) == s["n_tissue_tiles"]
    for r in rows:
        assert heat[int(r["row"]), int(r["col"])] == pytest.approx(float(r["probability"]), abs=1e-6)
        assert int(r["x"]) == round(int(r["col"]) * s["stride_level0"])
    n_tumour = int((heat >= 0.5).sum())
    assert 0 < n_tumour < s["n_tissue_tiles"] and s["n_tumour_tiles"] == n_tumour
    gj = json.loads((out / "regions.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == s["n_regions"] > 0
    tile_area = s["tile_size_level0"] ** 2
    total = 0.0
    for f in gj["features"]:
        assert f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
        m = props["measurements"]
        _check_rings(f["geometry"]["coordinates"])
        area = _polygon_area(f["geometry"]["coordinates"])
        assert area == pytest.approx(m["n_tiles"] * tile_area, rel=1e-6)
        assert m["area_mm2"] == pytest.approx(area * 0.499**2 / 1e6, rel=1e-6)
        assert 0.5 <= m["mean_probability"] <= m["max_probability"] <= 1
        total += area
    assert total == pytest.approx(n_tumour * tile_area, rel=1e-6)
    assert s["tumour_region_area_mm2"] == pytest.approx(total * 0.499**2 / 1e6, rel=1e-6)
    # tumour area counts only the tissue inside tumour tiles: never more than the polygons or the tissue
    assert 0 < s["tumour_area_mm2"] <= s["tumour_region_area_mm2"]
    assert s["tumour_area_mm2"] <= s["tissue_area_mm2"] < 2220 * 2967 * 0.499**2 / 1e6
    assert s["slide_mpp"] == 0.499 and s["model_mpp"] == 4.0 and s["level"] == 0
    # tiles are resampled from 0.499 to the model's 4 µm/px: no resolution warning (and no colour statistics)
    assert s["level_mpp"] == 0.499 and s["tile_mpp"] == 4.0 and s["warnings"] == []
    assert (
        s["threshold_source"].startswith("threshold.json")
        and "level 0 read at 0.499 µm/px" in s["caption"][1]
    )


def test_map_slide_ring_with_hole(darkness, tmp_path: Path) -> None:
    # synthetic slide at 1 µm/px, tiles of 32 px at 4 µm/px = 128 px: a 3x3 ring of purple tiles, pink centre
    img = np.full((128 * 5, 128 * 5, 3), 240, np.uint8)
    img[128:512, 128:512] = PURPLE
    img[256:384, 256:384] = PINK
    _write_tiff(tmp_path / "ring.tif", img, 1.0, 128, levels=2)
    s = map_slide(darkness, tmp_path / "ring.tif", tmp_path / "out", SlideOptions(stride=32, smooth=0), False)
    [feat] = json.loads((tmp_path / "out" / "regions.geojson").read_text())["features"]
    outer, hole = feat["geometry"]["coordinates"]
    assert sorted(map(tuple, outer[:-1])) == [(128, 128), (128, 512), (512, 128), (512, 512)]
    assert sorted(map(tuple, hole[:-1])) == [(256, 256), (256, 384), (384, 256), (384, 384)]
    assert feat["properties"]["measurements"]["n_tiles"] == 8 == s["n_tumour_tiles"]
    # a SubIFD pyramid, whose second level OpenSlide does not see: read through tiffslide
    assert s["n_tissue_tiles"] == 9 and s["reader"] == "tiffslide"


def test_map_slide_two_levels_real_model(model32, slides: Path, tmp_path: Path) -> None:
    slide = slides / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(HistoscanInputError, match="--mpp"):
        map_slide(model32, slide, tmp_path / "a", SlideOptions(), progress=False)
    opts = SlideOptions(mpp=0.5, model_mpp=8.0, threshold=0.0, stride=32)  # heatmap cells = tiles
    s = map_slide(model32, slide, tmp_path / "b", opts, progress=False)  # the real torch model
    assert s["level"] == 1 and s["read_size"] == round(512 / 2.0005055500659967)
    # --model-mpp 8 on a model trained at 4 µm/px: the tiles are at the wrong scale, said once
    [warning] = s["warnings"]
    assert warning.startswith("resolution:") and "8 µm/px" in warning and "4 µm/px" in warning
    assert s["caption"][-1] == f"warning: {warning}"
    heat = np.load(tmp_path / "b" / "heatmap.npy")
    assert heat.shape == (s["grid"][0], s["grid"][1]) and np.nanmin(heat) >= 0 and np.nanmax(heat) <= 1
    assert s["n_tumour_tiles"] == s["n_tissue_tiles"] > 0  # threshold 0: every tissue tile is "tumour"
    feats = json.loads((tmp_path / "b" / "regions.geojson").read_text())["features"]
    cells = sum(f["properties"]["measurements"]["n_tiles"] for f in feats)
    area = sum(_polygon_area(f["geometry"]["coordinates"]) for f in feats)
    assert cells == s["n_tissue_tiles"] and area == pytest.approx(
        cells * s["tile_size_level0"] ** 2, rel=1e-6
    )


def test_explain_top_k(cmu_map) -> None:
    s, out, calls = cmu_map
    [(images, ids)] = calls
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8 and len(s["explained"]) == 3
    rows = {(r["x"], r["y"]): float(r["probability"]) for r in csv.DictReader((out / "tiles.csv").open())}
    top = sorted(rows.values(), reverse=True)[:3]
    got = [rows[tuple(i.removeprefix("tile_x").split("_y"))] for i in ids]
    assert got == top and min(got) >= 0.5


def test_explain_below_threshold(run32: Path, small_slide: Path, tmp_path: Path, capsys) -> None:
    """No tile reaches the threshold: the K most probable tiles are explained anyway, marked, and it is said."""
    out = tmp_path / "o"
    args = ["slide", str(run32), str(small_slide), "--out", str(out), "--no-progress", "--explain", "2"]
    assert main(args + ["--threshold", "1"]) == 0
    printed = capsys.readouterr().out
    assert (
        "note: no tile reached the threshold 1; explained the 2 most probable tiles (below threshold)"
        in printed
    )
    s = json.loads((out / "summary.json").read_text())
    assert len(s["explained"]) == 2 and all(
        p.endswith("_below-threshold_gradcam.png") for p in s["explained"]
    )
    assert all((out / p).stat().st_size > 0 for p in s["explained"]) and s["n_tumour_tiles"] == 0
    notes = np.load(out / "explain" / "gradcam.npz")["notes"]
    assert all("below the threshold 1" in n for n in notes)


def test_onnx_backend_without_export(run32: Path) -> None:
    with pytest.raises(HistoscanInputError, match="model.onnx: not found; create it with histoscan export"):
        load_predictor(run32, "onnx")


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640 x 640 tiled TIFF at 1 µm/px with a purple block on pink tissue."""
    img = np.full((640, 640, 3), 240, np.uint8)
    img[100:540, 100:540] = PINK
    img[200:400, 200:400] = PURPLE
    path = tmp_path_factory.mktemp("small") / "small.tif"
    _write_tiff(path, img, 1.0, 128)
    return path


def test_cli_end_to_end_and_force(run32: Path, small_slide: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    args = ["slide", str(run32), str(small_slide), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "tissue tiles" in capsys.readouterr().out
    assert main(args) == 2  # non-empty out folder
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force", "--threshold", "0.0"]) == 0
    assert json.loads((out / "summary.json").read_text())["threshold"] == 0.0


def _cli_err(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_cli_bad_slides(run32: Path, tmp_path: Path, capsys) -> None:
    base = ["slide", str(run32)]
    err = _cli_err(base + [str(tmp_path / "nope.svs"), "--out", str(tmp_path / "a")], capsys)
    assert "nope.svs: slide not found" in err
    fake = tmp_path / "fake.svs"
    fake.write_text("not a slide at all\n")
    assert "fake.svs: not a slide" in _cli_err(base + [str(fake), "--out", str(tmp_path / "b")], capsys)
    img = np.full((256, 256, 3), 240, np.uint8)
    img[64:192, 64:192] = PINK
    tifffile.imwrite(tmp_path / "plain.tif", img, photometric="rgb")  # no resolution tags
    err = _cli_err(base + [str(tmp_path / "plain.tif"), "--out", str(tmp_path / "c")], capsys)
    assert "plain.tif: no µm/px" in err and "--mpp" in err
    assert main(base + [str(tmp_path / "plain.tif"), "--out", str(tmp_path / "c"), "--mpp", "1.0"]) == 0


def test_cli_white_slide_is_empty_not_an_error(run32: Path, tmp_path: Path, capsys) -> None:
    tifffile.imwrite(tmp_path / "white.tif", np.full((512, 512, 3), 250, np.uint8), photometric="rgb")
    out = tmp_path / "o"
    assert main(["slide", str(run32), str(tmp_path / "white.tif"), "--out", str(out), "--mpp", "1"]) == 0
    assert "no tissue found" in capsys.readouterr().out
    assert np.isnan(np.load(out / "heatmap.npy")).all()
    assert json.loads((out / "regions.geojson").read_text())["features"] == []
    assert (out / "tiles.csv").read_text().strip() == "x,y,probability,row,col,tissue_fraction"
    s = json.loads((out / "summary.json").read_text())
    assert s["n_tissue_tiles"] == 0 and s["max_probability"] is None and s["tissue_area_mm2"] == 0


def test_cli_model_without_mpp(tmp_path: Path, small_slide: Path, capsys) -> None:
    run = make_run(tmp_path / "run32", image_size=32, mpp=None)
    args = ["slide", str(run), str(small_slide), "--out", str(tmp_path / "o")]
    assert "--model-mpp" in _cli_err(args, capsys)
    assert main(args + ["--model-mpp", "8", "--no-progress"]) == 0


def test_map_slide_overlapping_stride_cells(darkness, tmp_path: Path) -> None:
    img = np.full((128 * 5, 128 * 5, 3), 240, np.uint8)
    img[128:512, 128:384] = PURPLE
    _write_tiff(tmp_path / "s.tif", img, 1.0, 128)
    opts = SlideOptions(stride=16, min_tissue=0.5)  # 64 level-0 px steps; heatmap cells 64 px from the corner
    s = map_slide(darkness, tmp_path / "s.tif", tmp_path / "o", opts, False)
    assert s["stride_level0"] == 64 and s["grid"] == [9, 9]
    feats = json.loads((tmp_path / "o" / "regions.geojson").read_text())["features"]
    area = sum(_polygon_area(f["geometry"]["coordinates"]) for f in feats)
    assert area == s["n_tumour_tiles"] * 64**2 > 0


def test_explain_with_an_onnx_model_is_refused_before_the_slide_is_read(run32: Path, tmp_path: Path) -> None:
    """slide --explain with a model Grad-CAM cannot run on: the one message, and nothing read or written."""
    from histoscan.export.onnx import export_onnx
    from histoscan.inference.base import ExplainUnavailable

    onnx = load_predictor(export_onnx(run32, tmp_path / "m.onnx"), device="cpu")
    out = tmp_path / "out"
    refused = r"m.onnx: Grad-CAM needs the PyTorch model \(run folder or .ckpt\), not an ONNX export$"
    with pytest.raises(ExplainUnavailable, match=refused):
        map_slide(onnx, tmp_path / "no-such-slide.svs", out, SlideOptions(explain=2), False)
    assert not out.exists()
