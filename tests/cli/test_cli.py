"""CLI contract: every kind of bad input exits 2 with one line naming the file or field; --skip-bad counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoscan.cli import main


def _folder(root: Path, idc_root: Path, n: int = 6) -> Path:
    """A small manifest dataset of real idc-breast patches: n per class from two patients."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,group"]
    for label in (0, 1):
        files = sorted(idc_root.glob(f"images/*/*class{label}.png"))[:n]
        for f in files:
            shutil.copy(f, root / f.name)
            lines.append(f"{f.name},{label},{f.parent.name}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def _run(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr without progress-bar lines."""
    code = main(args)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    return code, "\n".join(ln for ln in lines if ln.strip() and "img/s]" not in ln and "it/s]" not in ln)


def _train(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--limit-batches", "1"]


def _assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def test_missing_path(tmp_path, capsys):
    code, err = _run(_train(tmp_path / "nope", tmp_path / "run"), capsys)
    _assert_one_line(code, err, "nope")


def test_unknown_format(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("hello")
    code, err = _run(_train(tmp_path / "data", tmp_path / "run"), capsys)
    _assert_one_line(code, err, "data")


def test_empty_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _run(_train(tmp_path / "empty", tmp_path / "run"), capsys)
    _assert_one_line(code, err, "empty")


def test_one_class_only(tmp_path, idc_root, capsys):
    csv = _folder(tmp_path / "d", idc_root)
    header, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([header] + [r for r in rows if r.split(",")[1] == "0"]) + "\n")
    code, err = _run(_train(csv, tmp_path / "run"), capsys)
    _assert_one_line(code, err, "class")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_image_then_skip_bad(tmp_path, idc_root, capsys, damage):
    csv = _folder(tmp_path / "d", idc_root)
    victim = sorted((tmp_path / "d").glob("*.png"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\x89PNG not really")
    code, err = _run(["prepare", str(csv), "--out", str(tmp_path / "store")], capsys)
    _assert_one_line(code, err, victim.name)
    code, err = _run(["prepare", str(csv), "--out", str(tmp_path / "store"), "--skip-bad"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["n_skipped"] == 1 and victim.name in json.dumps(meta["skipped"])
    assert meta["n"] == 11 and meta["counts"] == {"0": 5, "1": 6}


def test_labels_csv_missing_column(tmp_path, idc_root, capsys):
    csv = _folder(tmp_path / "d", idc_root)
    csv.write_text(csv.read_text().replace("path,label,group", "path,diagnosis,group"))
    code, err = _run(_train(csv, tmp_path / "run"), capsys)
    _assert_one_line(code, err, "label")


def test_non_binary_label(tmp_path, idc_root, capsys):
    csv = _folder(tmp_path / "d", idc_root)
    lines = csv.read_text().splitlines()
    name = lines[3].split(",")[0]
    lines[3] = lines[3].replace(",0,", ",7,")
    csv.write_text("\n".join(lines) + "\n")
    code, err = _run(_train(csv, tmp_path / "run"), capsys)
    _assert_one_line(code, err, "7")
    assert name in err or "line" in err or "labels.csv" in err


def test_listed_image_absent_then_skip_bad(tmp_path, idc_root, capsys):
    csv = _folder(tmp_path / "d", idc_root)
    gone = sorted((tmp_path / "d").glob("*.png"))[2]
    gone.unlink()
    code, err = _run(_train(csv, tmp_path / "run"), capsys)
    _assert_one_line(code, err, gone.name)
    code, err = _run(["prepare", str(csv), "--out", str(tmp_path / "s"), "--skip-bad"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["n_skipped"] == 1


def test_train_too_few_patients_for_a_grouped_split(tmp_path, idc_root, capsys):
    csv = _folder(tmp_path / "d", idc_root)  # two patients: cannot fill train, val and test by patient
    code, err = _run(_train(csv, tmp_path / "run"), capsys)
    assert code == 2 and len(err.splitlines()) == 1


def test_rgba_and_grey_images_train(tmp_path, capsys):
    """Unusual but valid images are converted with a note, not rejected."""
    root = tmp_path / "folders"
    rng = np.random.default_rng(0)
    for label in (0, 1):
        for p in range(4):
            d = root / f"patient{p}" / str(label)
            d.mkdir(parents=True)
            for i in range(3):
                arr = rng.integers(0, 255, (40, 40, 4 if i == 0 else 3), dtype=np.uint8)
                img = Image.fromarray(arr).convert("L") if i == 1 else Image.fromarray(arr)
                img.save(d / f"{i}.png")
    code, err = _run(["prepare", str(root), "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["n"] == 24 and meta["size"] == 40
    assert any("alpha" in k for k in json.dumps(meta["notes"]).split('"'))


@pytest.mark.parametrize("command", ["cv", "tune"])
def test_use_folds_that_are_not_numbers(command, tmp_path, idc_root, capsys):
    data = _folder(tmp_path / "d", idc_root)
    args = [command, "--data", str(data), "--out", str(tmp_path / "o"), "--use-folds", "0,x", "--epochs", "1"]
    code, err = _run(args, capsys)
    _assert_one_line(code, err, "--use-folds 0,x", "fold numbers")
    assert not (tmp_path / "o").exists()


def test_predict_and_prepare_say_when_images_of_another_size_were_fitted(
    idc_root: Path, tmp_path: Path, capsys
) -> None:
    """Nothing is fitted silently: a 50x42 image among 50x50 ones is named on the console of both commands."""
    from run_fixtures import make_run

    run = make_run(tmp_path / "run")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, f in enumerate(sorted(idc_root.glob("images/*/*class0.png"))[:3]):
        with Image.open(f) as im:
            (im.crop((0, 0, 50, 42)) if i == 0 else im.copy()).convert("RGB").save(folder / f"p{i}.png")
    assert main(["predict", str(run), "--data", str(folder), "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "note: 1 of 3 images had another size" in out and "(1 padded)" in out, out
    assert main(["prepare", str(folder), "--out", str(tmp_path / "store"), "--image-size", "50"]) == 0
    out = capsys.readouterr().out
    assert "fitted 1 image(s) of another size to 50x50 (--fit pad); listed in fitted.csv" in out, out
