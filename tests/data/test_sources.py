"""Source detection and readers: idc-breast (real), Kaggle HCD (real .tif), PCam fixtures, folders, CSVs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from pcam_fixtures import write_pcam
from PIL import Image

from histoscan.data.base import parse_label
from histoscan.data.detect import detect_source
from histoscan.errors import HistoscanInputError

IDC_PATIENTS = ("12877", "12879", "12882", "14078")  # 41 patches, both classes in each


def make_idc_subset(
    idc_root: Path, dest: Path, patients: tuple[str, ...] = IDC_PATIENTS
) -> list[dict[str, str]]:
    """Copy a few real idc-breast patients into `dest` in the same layout (images/<patient>/, labels.csv)."""
    with open(idc_root / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["patient"] in patients]
    for r in rows:
        (dest / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(idc_root / r["path"], dest / r["path"])
    with open(dest / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "patient"])
        w.writeheader()
        w.writerows(rows)
    return rows


def _png(path: Path, colour: int = 100, size: tuple[int, int] = (40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), colour, np.uint8)).save(path)


def test_idc_layout_is_a_manifest_with_patients_and_mpp(idc_root: Path, tmp_path: Path) -> None:
    rows = make_idc_subset(idc_root, tmp_path)
    src = detect_source(tmp_path)
    assert (src.kind, src.part, src.mpp, len(src)) == ("manifest", "labelled", 4.0, len(rows) == 41 and 41)
    assert [it.label for it in src.items] == [int(r["label"]) for r in rows]
    assert {it.group for it in src.items} == set(IDC_PATIENTS)
    assert src.items[0].id == Path(rows[0]["path"]).stem and src.items[0].source == rows[0]["path"]
    assert src.sizes().most_common(1)[0][0] == (50, 50)


def test_class_folders_with_and_without_groups(tmp_path: Path) -> None:
    for name in ("normal/a.png", "normal/b.png", "Tumour/c.png"):
        _png(tmp_path / "flat" / name)
    src = detect_source(tmp_path / "flat")
    assert src.kind == "folders" and [it.label for it in src.items] == [1, 0, 0]  # sorted: Tumour < normal
    assert {it.group for it in src.items} == {""}
    for name in ("p1/0/a.png", "p1/1/b.png", "p2/0/c.tif", "p2/1/d.jpg"):
        _png(tmp_path / "grouped" / name)
    src = detect_source(tmp_path / "grouped")
    assert [(it.group, it.label, it.id) for it in src.items] == [
        ("p1", 0, "a"),
        ("p1", 1, "b"),
        ("p2", 0, "c"),
        ("p2", 1, "d"),
    ]


def test_stray_folder_beside_label_folders_is_an_error(tmp_path: Path) -> None:
    _png(tmp_path / "0" / "a.png")
    _png(tmp_path / "1" / "b.png")
    _png(tmp_path / "extra" / "c.png")
    with pytest.raises(HistoscanInputError, match=r"extra: not a label folder .* beside 0, 1"):
        detect_source(tmp_path)
    (tmp_path / "extra" / "c.png").rename(tmp_path / "extra" / "images.npy")  # a store inside is ignored
    assert len(detect_source(tmp_path)) == 2


def test_plain_image_folder_is_unlabelled(tmp_path: Path) -> None:
    _png(tmp_path / "x" / "one.png")
    _png(tmp_path / "y" / "one.png")  # same stem twice -> ids fall back to relative paths
    src = detect_source(tmp_path)
    assert src.kind == "images" and src.part == "unlabelled" and not src.labelled
    assert [it.id for it in src.items] == ["x/one", "y/one"]
    with pytest.raises(HistoscanInputError, match="has no labels"):
        detect_source(tmp_path, part="labelled")
    single = detect_source(tmp_path / "x" / "one.png")
    assert single.kind == "images" and len(single) == 1


def test_real_kaggle_test_folder_in_submission_order(shared_data: Path) -> None:
    root = shared_data / "kaggle-hcd-test"
    src = detect_source(root)
    with open(root / "sample_submission.csv", newline="") as f:
        ids = [r["id"] for r in csv.DictReader(f)]
    assert (src.kind, src.part, src.mpp, src.native_size) == ("kaggle-hcd", "unlabelled", 0.972, 96)
    assert [it.id for it in src.items] == ids and all(it.label == -1 for it in src.items)
    with pytest.raises(HistoscanInputError, match="no train_labels.csv"):
        detect_source(root, part="labelled")


def test_kaggle_full_layout_parts(shared_data: Path, tmp_path: Path) -> None:
    tifs = sorted((shared_data / "kaggle-hcd-test").glob("*.tif"))
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for t in tifs[:6]:
        shutil.copy2(t, tmp_path / "train" / t.name)
    for t in tifs[6:9]:
        shutil.copy2(t, tmp_path / "test" / t.name)
    (tmp_path / "train_labels.csv").write_text(
        "id,label\n" + "".join(f"{t.stem},{i % 2}\n" for i, t in enumerate(tifs[:6]))
    )
    test_ids = [t.stem for t in reversed(tifs[6:9])]
    (tmp_path / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0\n" for i in test_ids))
    train = detect_source(tmp_path)  # auto: the labelled part
    assert train.part == "labelled" and [it.label for it in train.items] == [0, 1, 0, 1, 0, 1]
    test = detect_source(tmp_path, part="unlabelled")
    assert [it.id for it in test.items] == test_ids and test.items[0].source == f"test/{test_ids[0]}.tif"


def test_pcam_folder_subset_single_file_and_meta(tmp_path: Path) -> None:
    fx = write_pcam(tmp_path, {"train": 6, "valid": 4})
    src = detect_source(tmp_path)
    assert (src.kind, len(src), src.mpp, src.native_size, src.part) == ("pcam", 10, 0.972, 96, "labelled")
    assert [p.split for p in src.parts] == ["train", "val"]
    np.testing.assert_array_equal(src.parts[0].labels, fx.y["train"])
    assert src.parts[1].groups == fx.wsi["valid"]
    one = detect_source(tmp_path / "camelyonpatch_level_2_split_valid_x.h5")
    assert len(one) == 4 and one.parts[0].split == "val" and len(one.inputs()) == 3


def test_pcam_without_labels_or_meta(tmp_path: Path) -> None:
    write_pcam(tmp_path, {"train": 4, "test": 2}, with_meta=False)
    (tmp_path / "camelyonpatch_level_2_split_test_y.h5").unlink()
    assert [p.split for p in detect_source(tmp_path).parts] == ["train"]  # auto: labelled part
    test = detect_source(tmp_path, part="unlabelled")
    assert [p.split for p in test.parts] == ["test"] and test.parts[0].groups is None and not test.labelled


@pytest.mark.parametrize(
    "damage, message",
    [
        ("gz", "gzip-compressed"),
        ("y_count", r"_y\.h5: 3 labels for 4 images"),
        ("y_value", r"_y\.h5: label 2 is not 0 or 1"),
        ("x_shape", r"_x\.h5: dataset 'x' is \(4, 96, 96\)"),
        ("x_key", r"_x\.h5: no dataset 'x'"),
        ("meta_rows", r"_meta\.csv: 2 rows for 4 images"),
        ("meta_col", r"_meta\.csv: missing column 'wsi'"),
    ],
)
def test_pcam_damage_is_named(tmp_path: Path, damage: str, message: str) -> None:
    write_pcam(tmp_path, {"train": 4}, gz=damage == "gz")
    x, y = (
        tmp_path / "camelyonpatch_level_2_split_train_x.h5",
        tmp_path / "camelyonpatch_level_2_split_train_y.h5",
    )
    meta = tmp_path / "camelyonpatch_level_2_split_train_meta.csv"
    if damage.startswith("y_"):
        with h5py.File(y, "w") as f:
            f["y"] = np.array([0, 1, 0] if damage == "y_count" else [0, 1, 2, 0], np.uint8).reshape(
                -1, 1, 1, 1
            )
    if damage.startswith("x_"):
        with h5py.File(x, "w") as f:
            f["x" if damage == "x_shape" else "images"] = np.zeros((4, 96, 96), np.uint8)
    if damage == "meta_rows":
        meta.write_text("\n".join(meta.read_text().splitlines()[:3]) + "\n")
    if damage == "meta_col":
        meta.write_text(meta.read_text().replace("wsi", "slide_name"))
    with pytest.raises(HistoscanInputError, match=message):
        detect_source(tmp_path)


def test_manifest_csv_paths_relative_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    m = tmp_path / "sub" / "list.csv"
    m.parent.mkdir()
    m.write_text("path,label,slide\n../imgs/a.png,tumor,s1\n../imgs/b.png,0,s2\n")
    src = detect_source(m)
    assert [(it.label, it.group, it.id) for it in src.items] == [(1, "s1", "a"), (0, "s2", "b")]
    m.write_text("path,group\n../imgs/a.png,s1\n")
    with pytest.raises(HistoscanInputError, match=r"list\.csv: missing column 'label'"):
        detect_source(m)
    m.write_text("path,label\n../imgs/a.png,1\n../imgs/b.png,2\n")
    with pytest.raises(HistoscanInputError, match=r"list\.csv, line 3: label '2' is not 0 or 1"):
        detect_source(m)
    (tmp_path / "labels.csv").write_text("file,label\nimgs/a.png,1\n")  # a labels.csv is never ignored
    with pytest.raises(HistoscanInputError, match=r"labels\.csv: missing column 'path'"):
        detect_source(tmp_path)


def test_missing_and_unknown_inputs(tmp_path: Path) -> None:
    with pytest.raises(HistoscanInputError, match=r"nope: no such file or folder"):
        detect_source(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(HistoscanInputError, match=r"notes\.txt: unknown format"):
        detect_source(tmp_path / "notes.txt")
    with pytest.raises(HistoscanInputError, match="no supported data found"):
        detect_source(tmp_path)
    with pytest.raises(HistoscanInputError, match="--part"):
        detect_source(tmp_path, part="train")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value, label",
    [
        ("0", 0),
        ("1", 1),
        ("normal", 0),
        ("Tumor", 1),
        ("tumour", 1),
        ("non_tumor", 0),
        ("Negative", 0),
        ("metastasis", 1),
        ("1.0", 1),
        ("2", None),
        ("", None),
        ("unknown", None),
    ],
)
def test_parse_label(value: str, label: int | None) -> None:
    assert parse_label(value) == label
