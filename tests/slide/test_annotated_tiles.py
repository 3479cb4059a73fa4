"""`make_tiles`: labelled tiles cut from an annotated slide built from real HCD patches, on a grid offset from the
patch cells; resumable; the real .svs slides check reading and coordinates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoscan.data.patchstore import PatchStore
from histoscan.errors import HistoscanInputError
from histoscan.folders import StoreDir
from histoscan.slide.annotated import TilesOptions, make_tiles
from histoscan.slide.annotations import read_annotations

CELL = 96
ROWS, COLS = 4, 6
MARGIN = CELL // 2  # the patch cells start half a cell in: tiles from the slide corner are not the patches


def _hcd(shared_data: Path, n: int) -> list[np.ndarray]:
    root = shared_data / "hcd-train"
    with (root / "train_labels.csv").open() as f:
        rows = [r for r, _ in zip(csv.DictReader(f), range(400), strict=False)]
    normal = [r["id"] for r in rows if r["label"] == "0"][:n]
    return [np.asarray(Image.open(root / "train" / f"{i}.tif").convert("RGB")) for i in normal]


@pytest.fixture(scope="module")
def slide(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 0.972 µm/px TIFF slide: ROWS x COLS real patches on glass; the left two columns outlined as tumour."""
    tmp = tmp_path_factory.mktemp("annotated")
    patches = _hcd(shared_data, ROWS * COLS)
    img = np.full((ROWS * CELL + 2 * MARGIN, COLS * CELL + 2 * MARGIN + 3 * CELL, 3), 243, np.uint8)  # glass
    for k, p in enumerate(patches):
        r, c = divmod(k, COLS)
        img[MARGIN + r * CELL : MARGIN + (r + 1) * CELL, MARGIN + c * CELL : MARGIN + (c + 1) * CELL] = p
    path = tmp / "tumor_007.tif"
    mpp = 0.972
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")  # fmt: skip
    x0, y0, x1, y1 = MARGIN, MARGIN, MARGIN + 2 * CELL, MARGIN + ROWS * CELL
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    ann = tmp / "ann"
    ann.mkdir()
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}  # fmt: skip
    (ann / "tumor_007.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path, ann


def test_tiles_are_labelled_by_the_outline_and_grouped_by_slide(slide: tuple[Path, Path], tmp_path: Path) -> None:
    path, ann = slide
    said: list[str] = []
    store = make_tiles([path], ann, tmp_path / "store", TilesOptions(), progress=False, echo=said.append)
    assert store.size == CELL and set(store.groups) == {"tumor_007"}
    xy = np.array([[int(v) for v in i.split("_")[-2:]] for i in store.ids])
    # tiles start at the slide corner, half a cell off the patches: a tile is tumour iff its central 32 px
    # square overlaps the outlined columns x in [48, 240)
    cx = xy[:, 0] + CELL / 2
    want = ((cx + 16 > MARGIN) & (cx - 16 < MARGIN + 2 * CELL)).astype(int)
    assert store.labels.tolist() == want.tolist() and 0 < want.sum() < len(want)
    assert (xy % CELL == 0).all() and len(store) >= (ROWS - 1) * (COLS - 1)  # tissue tiles only (glass is not)
    # the stored pixels are the slide's at those places
    img = tifffile.imread(path)
    k = int(np.argmax(store.labels))
    x, y = xy[k]
    np.testing.assert_array_equal(store.images[k], img[y : y + CELL, x : x + CELL])
    with StoreDir(store.path).manifest_path.open() as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["tumour"]) == want.sum() and int(row["normal"]) == len(want) - want.sum()
    assert row["annotations"].endswith("tumor_007.geojson") and "tumour" in said[0]
    assert not (tmp_path / ".store.parts").exists()  # parts are removed once the store is packed


def test_fraction_rule_and_skip_unannotated(slide: tuple[Path, Path], tmp_path: Path) -> None:
    path, ann = slide
    centre = make_tiles([path], ann, tmp_path / "a", TilesOptions(), progress=False)
    frac = make_tiles([path], ann, tmp_path / "b", TilesOptions(label_rule="fraction", fraction=0.9), progress=False)
    assert frac.labels.sum() < centre.labels.sum()  # half-covered edge tiles are tumour by the centre rule only
    skip = make_tiles([path], ann, tmp_path / "c", TilesOptions(unannotated="skip"), progress=False)
    assert set(skip.labels.tolist()) == {1} and len(skip) == centre.labels.sum()


def test_an_interrupted_run_keeps_the_cut_slides(slide: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    path, ann = slide
    from histoscan.slide import annotated

    calls = {"n": 0}
    real = annotated.cut_slide

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(annotated, "pack_source", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    monkeypatch.setattr(annotated, "cut_slide", counting)
    with pytest.raises(KeyboardInterrupt):
        make_tiles([path], ann, tmp_path / "s", TilesOptions(), progress=False)
    assert calls["n"] == 1 and (tmp_path / ".s.parts" / "tumor_007.npz").is_file()
    monkeypatch.undo()
    monkeypatch.setattr(annotated, "cut_slide", counting)
    said: list[str] = []
    store = make_tiles([path], ann, tmp_path / "s", TilesOptions(), progress=False, echo=said.append)
    assert calls["n"] == 1 and "kept from an earlier run" in said[0] and len(store) > 0
    # other options cut the slide again
    make_tiles([path], ann, tmp_path / "t", TilesOptions(centre=8), progress=False)
    assert calls["n"] == 2


def test_bad_input(slide: tuple[Path, Path], tmp_path: Path) -> None:
    path, ann = slide
    out = tmp_path / "x"
    make_tiles([path], ann, out, progress=False)
    with pytest.raises(HistoscanInputError, match="folder exists and is not empty"):
        make_tiles([path], ann, out, progress=False)
    assert len(make_tiles([path], ann, out, TilesOptions(force=True), progress=False)) > 0
    with pytest.raises(HistoscanInputError, match="one file serves one slide"):
        make_tiles([path, path], ann / "tumor_007.geojson", tmp_path / "y", progress=False)
    with pytest.raises(HistoscanInputError, match="--centre 100: at most the tile size 96"):
        TilesOptions(centre=100)
    with pytest.raises(HistoscanInputError, match="--label-map"):
        TilesOptions(label_map="Tumor:tumour")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tumor_007.geojson").write_text("{")
    with pytest.raises(HistoscanInputError, match=r"tumor_007.geojson: not valid JSON"):
        make_tiles([path], bad, tmp_path / "z", progress=False)


@pytest.mark.parametrize("name", ["cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_outlines_in_level_0_pixels_of_both_real_slides(shared_data: Path, tmp_path: Path, name: str) -> None:
    """GeoJSON and ASAP XML outlines drawn in a real slide's level-0 pixels: read, clipped at its edge."""
    import openslide

    w, h = openslide.OpenSlide(str(shared_data / "slides" / name)).dimensions
    ring = [[w - 100, h // 2], [w + 100, h // 2], [w + 100, h // 2 + 50], [w - 100, h // 2 + 50], [w - 100, h // 2]]
    f = tmp_path / "a.geojson"
    f.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                              "properties": {"classification": {"name": "Tumor"}}}]))  # fmt: skip
    a = read_annotations(f, (w, h))
    assert a.tumour.area == pytest.approx(100 * 50) and dict(a.warnings) == {"clipped at the slide edge": 1}
    assert a.tumour.bounds == (w - 100, h // 2, w, h // 2 + 50)


def test_real_svs_slide_reads_outlines_at_level_0(shared_data: Path, tmp_path: Path) -> None:
    """An outline drawn in level-0 pixels of a real Aperio slide labels the tiles under it."""
    import openslide

    svs = shared_data / "slides" / "cmu-1-small-region.svs"
    w, h = openslide.OpenSlide(str(svs)).dimensions
    x0, y0, x1, y1 = w // 4, h // 4, w // 2, h // 2
    xml = tmp_path / f"{svs.stem}.xml"
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(pts))
    xml.write_text(f'<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="_0">'
                   f"<Coordinates>{coords}</Coordinates></Annotation></Annotations></ASAP_Annotations>")  # fmt: skip
    assert read_annotations(xml, (w, h)).tumour.area == pytest.approx((x1 - x0) * (y1 - y0))
    store = make_tiles([svs], xml, tmp_path / "svs", TilesOptions(min_tissue=0.1), progress=False)
    xy = np.array([[int(v) for v in i.split("_")[-2:]] for i in store.ids])
    tile0 = 96 * 0.972 / float(openslide.OpenSlide(str(svs)).properties["openslide.mpp-x"])
    centre = xy + tile0 / 2
    inside = (centre[:, 0] > x0) & (centre[:, 0] < x1) & (centre[:, 1] > y0) & (centre[:, 1] < y1)
    assert store.labels[inside].all() and inside.any()  # tiles centred in the outline are tumour
    far = (centre[:, 0] > x1 + tile0) | (centre[:, 1] > y1 + tile0) | (centre[:, 0] < x0 - tile0)
    assert not store.labels[far].any() and far.any()
    assert PatchStore.open(store.path).meta["format"] == "annotated-slides"
