"""What a store records beside its patches: each fitted patch (fitted.csv) and each skipped file (skipped.csv),
and `train --skip-bad` reporting the skipped files (count printed, list in RUN/skipped.csv)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pcam_fixtures import write_pcam
from PIL import Image

from histoscan.data.store import PatchStore, prepare, resolve_store, write_skipped

from .test_sources import make_idc_subset


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_idc_edge_patches_are_recorded_as_padded(idc_root: Path, tmp_path: Path) -> None:
    rows = make_idc_subset(idc_root, tmp_path / "idc")
    store = prepare(tmp_path / "idc", tmp_path / "store")
    sizes = [Image.open(tmp_path / "idc" / r["path"]).size for r in rows]
    expected = ["" if s == (50, 50) else f"padded {s[0]}x{s[1]} -> 50x50" for s in sizes]
    assert store.fitted == expected
    assert sorted(f for f in expected if f) == ["padded 50x11 -> 50x50"] + ["padded 50x42 -> 50x50"] * 4
    assert store.meta["n_fitted"] == 5 and store.meta["notes"] == {"padded": 5}
    fitted = _rows(tmp_path / "store" / "fitted.csv")
    assert [(int(r["row"]), r["id"]) for r in fitted] == [
        (i, store.ids[i]) for i, f in enumerate(expected) if f
    ]
    assert _rows(tmp_path / "store" / "skipped.csv") == []  # written, empty


def test_repacking_a_store_adds_its_fit_to_the_record(tmp_path: Path) -> None:
    write_pcam(tmp_path / "pcam", {"train": 3})
    store = prepare(tmp_path / "pcam", tmp_path / "store")
    assert store.fitted == ["", "", ""] and store.meta["n_fitted"] == 0
    small = prepare(tmp_path / "store", tmp_path / "small", image_size=64)
    assert small.fitted == ["cropped 96x96 -> 64x64"] * 3
    big = prepare(tmp_path / "small", tmp_path / "big", image_size=80, fit="resize")
    assert big.fitted == ["cropped 96x96 -> 64x64; resized 64x64 -> 80x80"] * 3


def test_a_store_without_fitted_csv(tmp_path: Path) -> None:
    """Older stores: no fits counted means none happened; counted fits are unknown per row (None)."""
    write_pcam(tmp_path / "pcam", {"train": 2})
    prepare(tmp_path / "pcam", tmp_path / "store")
    (tmp_path / "store" / "fitted.csv").unlink()
    assert PatchStore.open(tmp_path / "store").fitted == ["", ""]
    prepare(tmp_path / "store", tmp_path / "small", image_size=64)
    (tmp_path / "small" / "fitted.csv").unlink()
    assert PatchStore.open(tmp_path / "small").fitted is None


def test_cache_entry_without_fit_records_is_rebuilt(tmp_path: Path) -> None:
    d = tmp_path / "data"
    for i, shape in enumerate([(40, 40), (40, 40), (30, 40), (40, 40)]):
        (d / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*shape, 3), 60 * i, np.uint8)).save(d / str(i % 2) / f"{i}.png")
    first = resolve_store(d, cache_dir=tmp_path / "cache")
    assert first.fitted[first.ids.index("2")] == "padded 40x30 -> 40x40"
    stamp = json.loads((first.path / "meta.json").read_text())["created"]
    (first.path / "fitted.csv").unlink()  # as a cache entry written before fitted.csv existed
    again = resolve_store(d, cache_dir=tmp_path / "cache")
    assert again.path == first.path and (again.path / "fitted.csv").is_file()
    assert again.fitted == first.fitted and again.meta["created"] >= stamp


def test_skipped_files_are_listed_in_full_and_copied(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    for i in range(4):
        Image.fromarray(np.full((40, 40, 3), 50 * i, np.uint8)).save(d / f"{i}.png")
    (d / "1.png").write_bytes(b"garbage")
    (d / "labels.csv").write_text("path,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(5)))
    store = prepare(d, tmp_path / "store", skip_bad=True)
    listed = _rows(tmp_path / "store" / "skipped.csv")
    assert [r["path"] for r in listed] == ["1.png", "4.png"]
    assert "not a PNG, TIFF or JPEG" in listed[0]["reason"] and "not found" in listed[1]["reason"]
    line = write_skipped(store, tmp_path / "run", shown="RUN")
    assert line is not None and line.startswith("skipped 2 unreadable image(s) (--skip-bad), e.g. 1.png: ")
    assert line.endswith("; listed in RUN/skipped.csv")
    assert _rows(tmp_path / "run" / "skipped.csv") == listed
    good = tmp_path / "good"
    shutil.copytree(d, good)
    (good / "1.png").unlink()
    (good / "labels.csv").write_text("path,label\n0.png,0\n2.png,0\n3.png,1\n")
    assert write_skipped(prepare(good, tmp_path / "gs"), tmp_path / "r3") is None
    assert not (tmp_path / "r3").exists()


def test_train_skip_bad_prints_the_count_and_writes_run_skipped_csv(
    idc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from histoscan.cli import main

    rows = make_idc_subset(idc_root, tmp_path / "idc")
    victim = tmp_path / "idc" / rows[3]["path"]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    args = ["train", "--data", str(tmp_path / "idc"), "--out", str(tmp_path / "run"), "--epochs", "1"]
    code = main([*args, "--limit-batches", "1", "--batch-size", "8", "--skip-bad"])
    out = capsys.readouterr().out
    assert code == 0, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("skipped ")]
    assert line.startswith(f"skipped 1 unreadable image(s) (--skip-bad), e.g. {rows[3]['path']}: ")
    assert line.endswith(f"listed in {tmp_path / 'run' / 'skipped.csv'}")
    (row,) = _rows(tmp_path / "run" / "skipped.csv")
    assert row["path"] == rows[3]["path"] and "corrupt or truncated" in row["reason"]
