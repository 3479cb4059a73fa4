"""Packing sources into a PatchStore: round trips, notes, skipping, atomic writes, --force, the cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from pcam_fixtures import write_pcam
from PIL import Image

from histoscan.data import sources
from histoscan.data.images import decode_image, fit_image
from histoscan.data.store import PatchStore, is_store, prepare, require_labelled, resolve_store
from histoscan.errors import HistoscanInputError

from .test_sources import make_idc_subset


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _rgb(seed: int, h: int = 40, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_idc_round_trip_is_byte_equal(idc_root: Path, tmp_path: Path) -> None:
    rows = make_idc_subset(idc_root, tmp_path / "idc")
    store = prepare(tmp_path / "idc", tmp_path / "store")
    assert (len(store), store.size, store.meta["mpp"], store.meta["format"]) == (41, 50, 4.0, "manifest")
    for i, r in enumerate(rows):
        img, _ = decode_image(tmp_path / "idc" / r["path"], r["path"])
        np.testing.assert_array_equal(store.images[i], fit_image(img, 50, "pad"))
    assert store.labels.tolist() == [int(r["label"]) for r in rows]
    assert store.groups == [r["patient"] for r in rows] and store.sources == [r["path"] for r in rows]
    assert store.meta["counts"] == {"0": 27, "1": 14} and store.meta["n_groups"] == 4
    assert store.has_labels and store.has_groups and store.splits == [""] * 41
    header = (tmp_path / "store" / "index.csv").read_text().splitlines()[0]
    assert header == "id,label,group,source,split"
    require_labelled(store)  # both classes: no error


def test_pcam_round_trip_keeps_splits_groups_and_pixels(tmp_path: Path) -> None:
    fx = write_pcam(tmp_path / "pcam", {"train": 6, "valid": 4, "test": 2})
    store = prepare(tmp_path / "pcam", tmp_path / "store")
    np.testing.assert_array_equal(store.images, np.concatenate([fx.x["train"], fx.x["valid"], fx.x["test"]]))
    assert store.splits == ["train"] * 6 + ["val"] * 4 + ["test"] * 2
    assert store.groups == fx.wsi["train"] + fx.wsi["valid"] + fx.wsi["test"]
    assert store.ids[:2] == ["train_000000", "train_000001"] and store.ids[6] == "val_000000"
    assert store.meta["splits"] == {"train": 6, "val": 4, "test": 2} and store.meta["mpp"] == 0.972
    assert isinstance(store.images, np.memmap) and not store.images.flags.writeable
    small = prepare(
        tmp_path / "store", tmp_path / "small", image_size=64
    )  # a store re-packed at another size
    np.testing.assert_array_equal(small.images[0], fx.x["train"][0, 16:80, 16:80])
    assert small.meta["notes"] == {"cropped": 12} and small.splits == store.splits


def test_real_kaggle_tifs_round_trip(shared_data: Path, tmp_path: Path) -> None:
    store = prepare(shared_data / "kaggle-hcd-test", tmp_path / "store")
    assert len(store) == 18 and store.meta["counts"] == {"unlabelled": 18} and not store.has_labels
    for i in (0, 17):
        np.testing.assert_array_equal(
            store.images[i], tifffile.imread(shared_data / "kaggle-hcd-test" / store.sources[i])
        )
    with pytest.raises(HistoscanInputError, match="18 of 18 images have no label"):
        require_labelled(store)


def test_conversions_and_modal_size_are_recorded(tmp_path: Path) -> None:
    d = tmp_path / "data"
    _png(d / "0" / "a.png", _rgb(0))
    _png(d / "0" / "b.png", _rgb(1))
    _png(d / "1" / "c.png", np.dstack([_rgb(2), np.full((40, 40), 255, np.uint8)]), "RGBA")
    _png(d / "1" / "d.png", _rgb(3)[:, :, 0], "L")
    _png(d / "1" / "e.png", _rgb(4, 30, 36))  # smaller: reflect-padded to the modal 40
    g16 = np.random.default_rng(5).integers(0, 65536, (40, 40), dtype=np.uint16)
    Image.fromarray(g16).save(d / "0" / "f.png")
    store = prepare(d, tmp_path / "store")
    assert store.size == 40 and store.meta["format"] == "folders"
    assert store.meta["notes"] == {"alpha": 1, "grey": 1, "16-bit+grey": 1, "padded": 1}
    assert store.meta["counts"] == {"0": 3, "1": 3} and store.meta["mpp"] is None
    np.testing.assert_array_equal(store.images[store.ids.index("c")], _rgb(2))
    np.testing.assert_array_equal(store.images[store.ids.index("e")], fit_image(_rgb(4, 30, 36), 40))


def test_corrupt_and_absent_images_fail_or_are_skipped(tmp_path: Path) -> None:
    d = tmp_path / "data"
    for i in range(5):
        _png(d / f"{i}.png", _rgb(i))
    (d / "2.png").write_bytes((d / "2.png").read_bytes()[:300])  # truncated
    (d / "labels.csv").write_text(
        "path,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(6))
    )  # 5 absent
    with pytest.raises(HistoscanInputError, match=r"^2\.png: corrupt or truncated"):
        prepare(d, tmp_path / "store")
    (d / "2.png").unlink()
    _png(d / "2.png", _rgb(2))
    with pytest.raises(HistoscanInputError, match=r"^5\.png: image file not found but listed in labels\.csv"):
        prepare(d, tmp_path / "store")
    (d / "3.png").write_bytes(b"garbage")
    store = prepare(d, tmp_path / "store", skip_bad=True)
    assert store.ids == ["0", "1", "2", "4"] and store.images.shape == (4, 40, 40, 3)
    assert store.meta["n_skipped"] == 2 and [s["source"] for s in store.meta["skipped"]] == ["3.png", "5.png"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "store" / "images.npy")[3], _rgb(4)
    )  # file shrunk validly
    assert os.path.getsize(tmp_path / "store" / "images.npy") == store.images.offset + 4 * 40 * 40 * 3


def test_empty_single_class_and_all_bad(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "labels.csv").write_text("path,label\n")
    with pytest.raises(HistoscanInputError, match="no images found"):
        prepare(tmp_path / "empty", tmp_path / "s0")
    _png(tmp_path / "one" / "tumor" / "a.png", _rgb(0))
    store = prepare(tmp_path / "one", tmp_path / "s1")
    require_labelled(store, both_classes=False)
    with pytest.raises(HistoscanInputError, match=r"only class 1 \(1 images\)"):
        require_labelled(store)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(HistoscanInputError, match="no readable images"):
        prepare(tmp_path / "bad", tmp_path / "s2", image_size=32, skip_bad=True)
    assert not (tmp_path / "s2").exists()


def test_force_and_refusals(tmp_path: Path) -> None:
    write_pcam(tmp_path / "pcam", {"train": 2})
    prepare(tmp_path / "pcam", tmp_path / "store")
    with pytest.raises(HistoscanInputError, match=r"store: folder exists and is not empty \(use --force"):
        prepare(tmp_path / "pcam", tmp_path / "store")
    assert len(prepare(tmp_path / "pcam", tmp_path / "store", force=True, image_size=32)) == 2
    assert PatchStore.open(tmp_path / "store").size == 32
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(HistoscanInputError, match="not a histoscan store; refusing"):
        prepare(tmp_path / "pcam", tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    with pytest.raises(HistoscanInputError, match="--fit"):
        prepare(tmp_path / "pcam", tmp_path / "x", fit="stretch")  # type: ignore[arg-type]
    with pytest.raises(HistoscanInputError, match="--image-size"):
        prepare(tmp_path / "pcam", tmp_path / "x", image_size=0)


def test_interrupted_prepare_leaves_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "data"
    for i in range(6):
        _png(d / f"{i}.png", _rgb(i))
    prepare(d, tmp_path / "store")
    calls = {"n": 0}
    real = sources.load_patch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sources, "load_patch", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(d, tmp_path / "store", force=True, image_size=32)
    assert PatchStore.open(tmp_path / "store").size == 40  # the old store is untouched
    with pytest.raises(KeyboardInterrupt):
        calls["n"] = 0
        prepare(d, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "store"]  # no temp folders left


def test_open_rejects_incomplete_or_inconsistent(tmp_path: Path) -> None:
    write_pcam(tmp_path / "pcam", {"train": 3})
    prepare(tmp_path / "pcam", tmp_path / "store")
    shutil.copytree(tmp_path / "store", tmp_path / "bad")
    lines = (tmp_path / "bad" / "index.csv").read_text().splitlines()
    (tmp_path / "bad" / "index.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(HistoscanInputError, match="index.csv has 2 rows but images.npy is"):
        PatchStore.open(tmp_path / "bad")
    (tmp_path / "bad" / "meta.json").unlink()
    assert not is_store(tmp_path / "bad")
    with pytest.raises(HistoscanInputError, match="missing meta.json"):
        PatchStore.open(tmp_path / "bad")


def test_resolve_store_caches_and_rebuilds(tmp_path: Path) -> None:
    d = tmp_path / "data"
    for i in range(4):
        _png(d / str(i % 2) / f"{i}.png", _rgb(i))
    cache = tmp_path / "cache"
    first = resolve_store(d, cache_dir=cache)
    assert first.path.parent == cache and len(first) == 4
    created = json.loads((first.path / "meta.json").read_text())["created"]
    stamp = (first.path / "images.npy").stat().st_mtime_ns
    again = resolve_store(d, cache_dir=cache)
    assert again.path == first.path and (again.path / "images.npy").stat().st_mtime_ns == stamp
    assert again.meta["created"] == created
    _png(d / "1" / "3.png", _rgb(99))  # an input changes
    os.utime(d / "1" / "3.png", ns=(1, 1))
    rebuilt = resolve_store(d, cache_dir=cache)
    assert rebuilt.path == first.path and rebuilt.meta["checksum"] != first.meta["checksum"]
    np.testing.assert_array_equal(rebuilt.images[rebuilt.ids.index("3")], _rgb(99))
    other = resolve_store(d, cache_dir=cache, image_size=32)  # other params: another cache entry
    assert other.path != first.path and other.size == 32 and len(list(cache.iterdir())) == 2
    assert resolve_store(other.path).path == other.path  # a STORE is opened as is
    assert resolve_store(other.path, image_size=24, cache_dir=cache).size == 24
    default = resolve_store(d)  # $HISTOSCAN_CACHE (set by conftest) /stores
    assert default.path.parent == Path(os.environ["HISTOSCAN_CACHE"]) / "stores"


def test_custom_hdf5_with_other_patch_shape(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        f["x"], f["y"] = x, np.array([0, 1, 0], np.uint8).reshape(3, 1, 1, 1)
    store = prepare(tmp_path / "mine.h5", tmp_path / "store")
    assert store.size == 50 and store.ids == ["mine_000000", "mine_000001", "mine_000002"]
    assert (
        store.meta["notes"] == {"padded": 3}
        and store.labels.tolist() == [0, 1, 0]
        and store.splits == [""] * 3
    )
    np.testing.assert_array_equal(store.images[1], fit_image(x[1], 50))
