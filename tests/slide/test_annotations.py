"""Reading Camelyon ASAP XML and QuPath GeoJSON outlines, the bad-input table, and PCam's tile label rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box

from histoscan.errors import HistoscanInputError
from histoscan.slide.annotations import (
    SlideAnnotations,
    annotation_for,
    parse_label_map,
    read_annotations,
    tile_labels,
)

DIMS = (1000, 800)


def asap(path: Path, shapes: list[tuple[str, list[tuple[float, float]]]]) -> Path:
    """Write an ASAP XML file as Camelyon16 ships them (Annotations + AnnotationGroups)."""
    rows = []
    for i, (group, pts) in enumerate(shapes):
        coords = "".join(f'<Coordinate Order="{j}" X="{x}" Y="{y}" />' for j, (x, y) in enumerate(pts))
        rows.append(
            f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup="{group}" Color="#F4FA58">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    groups = "".join(f'<Group Name="{g}" PartOfGroup="None"><Attributes /></Group>' for g in ("_0", "_1", "_2"))
    path.write_text(
        f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{"".join(rows)}</Annotations>'
        f"<AnnotationGroups>{groups}</AnnotationGroups></ASAP_Annotations>"
    )
    return path


def square(x: float, y: float, s: float) -> list[tuple[float, float]]:
    return [(x, y), (x + s, y), (x + s, y + s), (x, y + s)]


def feature(name: str | None, geometry: dict) -> dict:
    props: dict = {"objectType": "annotation"}
    if name is not None:
        props["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def ring(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]


def test_asap_camelyon16_groups_and_exclusions(tmp_path: Path) -> None:
    f = asap(tmp_path / "tumor_001.xml", [("_0", square(100, 100, 200)), ("_1", square(600, 400, 100)),
                                           ("_2", square(150, 150, 50))])  # fmt: skip
    a = read_annotations(f, DIMS)
    assert a.tumour.area == pytest.approx(200 * 200 + 100 * 100 - 50 * 50)  # the _2 exclusion is cut out
    assert a.normal.area == pytest.approx(2500) and dict(a.shapes) == {"tumour": 2, "normal": 1}
    assert len(a.lesions()) == 2 and a.lesions()[0].area > a.lesions()[1].area
    assert not a.warnings
    # Camelyon17's "metastases" group, and a label map that overrides the default
    g = asap(tmp_path / "patient_004_node_4.xml", [("metastases", square(10, 10, 20)), ("Other", square(0, 0, 5))])
    assert read_annotations(g, DIMS).tumour.area == pytest.approx(400)
    b = read_annotations(g, DIMS, parse_label_map("metastases=ignore,Other=tumour"))
    assert b.tumour.area == pytest.approx(25)


def test_qupath_geojson_collection_bare_list_holes_and_multipolygons(tmp_path: Path) -> None:
    holed = {"type": "Polygon", "coordinates": [ring(0, 0, 100), ring(40, 40, 20)]}
    multi = {"type": "MultiPolygon", "coordinates": [[ring(200, 200, 10)], [ring(300, 300, 30)]]}
    point = {"type": "Point", "coordinates": [5, 5]}
    feats = [feature("Tumor", holed), feature("Tumor", multi), feature("Stroma", {"type": "Polygon",
             "coordinates": [ring(500, 500, 50)]}), feature("Tumor", point)]  # fmt: skip
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    (tmp_path / "b.json").write_text(json.dumps(feats))  # QuPath's bare list of features
    for name in ("a.geojson", "b.json"):
        a = read_annotations(tmp_path / name, DIMS)
        assert a.tumour.area == pytest.approx(100 * 100 - 20 * 20 + 100 + 900)
        assert a.normal.area == pytest.approx(2500) and len(a.lesions()) == 3
    assert a.summary()["lesions"] == 3 and a.summary()["shapes"] == {"tumour": 2, "normal": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("<ASAP_Annotations><Annotations>", "not valid ASAP XML"),
        ("<Other/>", "expected <ASAP_Annotations>"),
        ("{", "not valid JSON"),
        ('{"type": "Topology"}', "not GeoJSON"),
        ('[{"type": "Feature"}]', "feature 1 has no geometry"),
        ("[]", "no outlines"),
    ],
)
def test_malformed_files_stop_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / ("s.xml" if content.startswith("<") else "s.geojson")
    f.write_text(content)
    with pytest.raises(HistoscanInputError, match=message) as e:
        read_annotations(f, DIMS)
    assert str(e.value).startswith(str(f)) and "\n" not in str(e.value)


def test_unmapped_class_and_outlines_outside_the_slide_stop(tmp_path: Path) -> None:
    f = tmp_path / "s.geojson"
    f.write_text(json.dumps([feature("Lymphocytes", {"type": "Polygon", "coordinates": [ring(0, 0, 10)]})]))
    with pytest.raises(HistoscanInputError, match=r"class 'Lymphocytes' has no label \(map it: --label-map"):
        read_annotations(f, DIMS)
    assert read_annotations(f, DIMS, {"Lymphocytes": "normal"}).normal.area == pytest.approx(100)
    g = asap(tmp_path / "far.xml", [("_0", square(5000, 5000, 10))])
    with pytest.raises(HistoscanInputError, match="every outline lies outside the slide"):
        read_annotations(g, DIMS)
    bad = tmp_path / "bad.xml"
    bad.write_text(
        '<ASAP_Annotations><Annotations><Annotation PartOfGroup="_0"><Coordinates><Coordinate Order="0" X="a" '
        'Y="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>'
    )
    with pytest.raises(HistoscanInputError, match="Annotation 1 .*numeric X / Y"):
        read_annotations(bad, DIMS)
    with pytest.raises(HistoscanInputError, match="cannot read"):
        read_annotations(tmp_path / "missing.xml", DIMS)


def test_repairable_problems_are_counted(tmp_path: Path) -> None:
    bowtie = [(0, 0), (100, 100), (100, 0), (0, 100)]  # self-intersecting: two triangles of 2,500 px²
    f = asap(tmp_path / "s.xml", [("_0", bowtie), ("_0", square(950, 700, 100)), ("_0", [(1, 1), (2, 2)]),
                                   ("_0", square(4000, 4000, 5))])  # fmt: skip
    a = read_annotations(f, DIMS)
    assert dict(a.warnings) == {"repaired self-intersecting": 1, "clipped at the slide edge": 1,
                                "dropped empty": 1, "dropped outside the slide": 1}  # fmt: skip
    assert a.tumour.area == pytest.approx(2 * 2500 + 50 * 100)  # the edge square clipped to 50 x 100


def test_pcam_centre_rule_fraction_rule_and_skip() -> None:
    ann = SlideAnnotations(Path("x"), tumour=box(0, 0, 60, 96), normal=box(200, 0, 300, 96))
    tiles = np.array([[0, 0, 96, 96],  # centre square 32..64 overlaps tumour x < 60; 62 % tumour
                      [50, 0, 146, 96],  # centre 82..114 misses; 10 % tumour
                      [60, 0, 156, 96],  # touches the outline only at x = 60: no tumour pixel
                      [-60, 0, 36, 96],  # centre -28..4 overlaps 0..4; 38 % tumour
                      [200, 0, 296, 96]])  # inside the normal outline  # fmt: skip
    assert tile_labels(ann, tiles).tolist() == [1, 0, 0, 1, 0]
    assert tile_labels(ann, tiles, rule="fraction", fraction=0.5).tolist() == [1, 0, 0, 0, 0]
    assert tile_labels(ann, tiles, rule="fraction", fraction=0.3).tolist() == [1, 0, 0, 1, 0]
    assert tile_labels(ann, tiles, rule="fraction", fraction=0.05).tolist() == [1, 1, 0, 1, 0]
    # partly annotated slides: only tiles inside a normal outline count as normal
    assert tile_labels(ann, tiles, unannotated="skip").tolist() == [1, -1, -1, 1, 0]


def test_annotation_file_per_slide(tmp_path: Path) -> None:
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "tumor_001.xml").write_text("<ASAP_Annotations/>")
    (folder / "normal_002.geojson").write_text("[]")
    assert annotation_for("slides/tumor_001.tif", folder) == folder / "tumor_001.xml"
    assert annotation_for("slides/normal_002.svs", folder) == folder / "normal_002.geojson"
    assert annotation_for("slides/other.svs", folder) is None  # mapped, not scored
    assert annotation_for("slides/any.svs", folder / "tumor_001.xml") == folder / "tumor_001.xml"
    (folder / "tumor_001.geojson").write_text("[]")
    with pytest.raises(HistoscanInputError, match="tumor_001 has 2 files"):
        annotation_for("tumor_001.svs", folder)
    with pytest.raises(HistoscanInputError, match="no such file or folder"):
        annotation_for("a.svs", tmp_path / "nope")
    with pytest.raises(HistoscanInputError, match="'x' is not NAME=LABEL"):
        parse_label_map("Tumor=tumour,x")
