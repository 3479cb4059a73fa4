"""Round trip through the CLI: outlines -> `tiles` -> `train` -> `slides --truth` -> QuPath GeoJSON read back by our
own reader (areas compared), with the per-slide truth scores and the cohort FROC."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoscan.cli import main
from histoscan.folders import CohortDir, SlideDir, StoreDir
from histoscan.slide.annotations import read_annotations

CELL, ROWS, COLS, MARGIN = 96, 4, 6, 48
MPP = 0.972


def _patches(shared_data: Path, label: str, n: int) -> list[np.ndarray]:
    root = shared_data / "hcd-train"
    with (root / "train_labels.csv").open() as f:
        ids = [r["id"] for r in csv.DictReader(f) if r["label"] == label][:n]
    return [np.asarray(Image.open(root / "train" / f"{i}.tif").convert("RGB")) for i in ids]


@pytest.fixture(scope="module")
def cohort(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three slides of real patches (tumour patches in the two left columns, outlined; normal elsewhere)."""
    tmp = tmp_path_factory.mktemp("round-trip")
    tumour, normal = _patches(shared_data, "1", 3 * ROWS * 2), _patches(shared_data, "0", 3 * ROWS * (COLS - 2))
    slides, ann = tmp / "slides", tmp / "ann"
    slides.mkdir()
    ann.mkdir()
    x0, y0, x1, y1 = MARGIN, MARGIN, MARGIN + 2 * CELL, MARGIN + ROWS * CELL
    for s in range(3):
        img = np.full((ROWS * CELL + 2 * MARGIN, COLS * CELL + 2 * MARGIN, 3), 243, np.uint8)
        for r in range(ROWS):
            for c in range(COLS):
                patch = tumour.pop() if c < 2 else normal.pop()
                img[MARGIN + r * CELL : MARGIN + (r + 1) * CELL, MARGIN + c * CELL : MARGIN + (c + 1) * CELL] = patch
        tifffile.imwrite(slides / f"node_{s}.tif", img, tile=(64, 64), photometric="rgb",
                         resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")  # fmt: skip
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(corners))
        (ann / f"node_{s}.xml").write_text(
            '<ASAP_Annotations><Annotations><Annotation Name="m" Type="Polygon" PartOfGroup="metastases">'
            f"<Coordinates>{coords}</Coordinates></Annotation></Annotations></ASAP_Annotations>"
        )
    return slides, ann


def test_annotations_tiles_train_slides_geojson(cohort: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    slides, ann = cohort
    store = tmp_path / "store"
    argv = ["tiles", *map(str, sorted(slides.glob("*.tif"))), "--annotations", str(ann), "--out", str(store),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("tumour,") == 3 and "next: histoscan train --data" in out
    with StoreDir(store).manifest_path.open() as f:
        assert [r["slide"].endswith(f"node_{i}.tif") for i, r in enumerate(csv.DictReader(f))] == [True] * 3
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--limit-batches", "2"]) == 0, capsys.readouterr().err  # fmt: skip
    by_slide: dict[str, set[str]] = {}
    with (run / "split.csv").open() as f:
        for r in csv.DictReader(f):
            by_slide.setdefault(r["group"], set()).add(r["split"])
    assert set(by_slide) == {"node_0", "node_1", "node_2"}
    assert all(len(parts) == 1 for parts in by_slide.values())  # split by slide: no slide in two parts
    capsys.readouterr()
    dest = tmp_path / "cohort"
    code = main(["slides", str(run), str(slides), "--out", str(dest), "--truth", str(ann), "--stride", "96",
                 "--no-progress", "--threshold", "0.5"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and "FROC " in text and "tile AUC" in text
    with CohortDir(dest).csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["truth_lesions"] == "1" and r["truth_dice"] != "" for r in rows)
    for r in rows:
        folder = SlideDir(CohortDir(dest).slide(r["id"]))
        truth = folder.read_truth()
        summary = folder.read_summary()
        assert truth["lesions"] == 1 and truth["true_mm2"] == pytest.approx((2 * CELL * ROWS * CELL) * (MPP / 1e3) ** 2)
        # QuPath's layout, read back by our own reader: the called area is the regions' area
        regions = folder.read_regions()
        assert all(f["properties"]["objectType"] == "annotation" and f["properties"]["classification"]["name"]
                   == "Tumor" for f in regions["features"])  # fmt: skip
        cell_px = summary["cell_size_level0"]
        called_px = summary["n_tumour_tiles"] * cell_px**2
        if regions["features"]:
            back = read_annotations(folder.regions, tuple(summary["dimensions"]))
            assert back.tumour.area == pytest.approx(called_px)
        else:
            assert called_px == 0
    # a slide without an outline file is mapped, not scored
    shutil.copy(slides / "node_0.tif", slides / "extra.tif")
    try:
        assert main(["slides", str(run), str(slides), "--out", str(dest), "--truth", str(ann), "--stride", "96",
                     "--no-progress", "--threshold", "0.5"]) == 0  # fmt: skip
        with CohortDir(dest).csv_path.open() as f:
            extra = [r for r in csv.DictReader(f) if r["id"] == "extra"]
        assert extra[0]["status"] == "ok" and extra[0]["truth_dice"] == ""
    finally:
        (slides / "extra.tif").unlink()


def test_slide_truth_writes_scores_and_draws_the_outline(cohort: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from run_fixtures import make_run

    slides, ann = cohort
    run = make_run(tmp_path / "run", image_size=96, mpp=MPP, bn_stats=True)
    plain, scored = tmp_path / "plain", tmp_path / "scored"
    base = ["slide", str(run), str(slides / "node_1.tif"), "--stride", "96", "--no-progress"]
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, "--out", str(scored), "--truth", str(ann / "node_1.xml")]) == 0
    text = capsys.readouterr().out
    assert "truth: tile AUC" in text and "1 lesion(s)" in text
    assert not SlideDir(plain).truth_path.exists()
    t = json.loads(SlideDir(scored).truth_path.read_text())
    assert t["annotations"]["shapes"] == {"tumour": 1} and len(t["detections"]["counts"]) > 100
    a = np.asarray(Image.open(SlideDir(plain).overlay).convert("RGB")).astype(int)
    b = np.asarray(Image.open(SlideDir(scored).overlay).convert("RGB")).astype(int)
    blue = (b[..., 2] > 200) & (b[..., 0] < 40) & (b[..., 1] < 140)
    assert blue.sum() > 100 and ((a[..., 2] > 200) & (a[..., 0] < 40) & (a[..., 1] < 140)).sum() < blue.sum() / 10
    assert main([*base, "--out", str(tmp_path / "x"), "--truth", str(ann / "nope.xml")]) == 2
    assert "--truth " in capsys.readouterr().err
