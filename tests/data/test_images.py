"""Decoding real and synthetic PNG/TIFF/JPEG patches to RGB uint8, and fitting them to a square size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoscan.data.images import (
    collect_images,
    decode_image,
    fit_image,
    image_size,
    list_images,
    load_patch,
)
from histoscan.errors import HistoscanInputError


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_real_kaggle_tif_decodes_as_rgb(shared_data: Path) -> None:
    f = sorted((shared_data / "kaggle-hcd-test").glob("*.tif"))[0]
    img, note = decode_image(f, f.name)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and note is None
    np.testing.assert_array_equal(img, tifffile.imread(f))
    assert image_size(f, f.name) == (96, 96)


def test_real_idc_png_matches_pillow(idc_root: Path) -> None:
    f = idc_root / (idc_root / "labels.csv").read_text().splitlines()[1].split(",")[0]
    img, note = decode_image(f.read_bytes(), f.name)
    assert note is None
    np.testing.assert_array_equal(img, np.asarray(Image.open(f).convert("RGB")))


def test_rgba_composited_over_white() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = [200, 40, 100]
    a[0, 0, 3], a[0, 1, 3], a[0, 2, 3] = 0, 255, 128
    img, note = decode_image(_png(a, "RGBA"), "x.png")
    assert note == "alpha"
    assert img[0, 0].tolist() == [255, 255, 255]  # fully transparent -> background white
    assert img[0, 1].tolist() == [200, 40, 100]  # opaque -> unchanged
    assert img[0, 2].tolist() == [
        round(200 * 128 / 255 + 255 * 127 / 255),
        round(40 * 128 / 255 + 255 * 127 / 255),
        round(100 * 128 / 255 + 255 * 127 / 255),
    ]


def test_grey_png_repeated_to_three_channels() -> None:
    g = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    img, note = decode_image(_png(g, "L"), "g.png")
    assert note == "grey" and img.shape == (4, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], g)


def test_16bit_grey_png_scaled_to_full_uint8_range() -> None:
    g = np.array([[0, 257 * 100, 65535, 32768]], np.uint16)
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="PNG")  # mode I;16
    img, note = decode_image(buf.getvalue(), "g16.png")
    assert note == "16-bit+grey"
    assert img[0, :, 0].tolist() == [0, 100, 255, 128]


def test_16bit_rgb_tiff_and_planar_tiff(tmp_path: Path) -> None:
    rgb16 = np.arange(2 * 3 * 3).reshape(2, 3, 3).astype(np.uint16) * 7000
    tifffile.imwrite(tmp_path / "a.tif", rgb16, photometric="rgb")
    img, note = decode_image(tmp_path / "a.tif", "a.tif")
    assert note == "16-bit"
    np.testing.assert_array_equal(img, np.rint(rgb16 / 257).astype(np.uint8))
    rgb8 = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb8, -1, 0), photometric="rgb", planarconfig="separate")
    img, note = decode_image(tmp_path / "p.tif", "p.tif")
    assert note is None
    np.testing.assert_array_equal(img, rgb8)


def test_palette_png_and_jpeg() -> None:
    p = Image.new("P", (3, 2))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putdata([0, 1, 0, 1, 1, 0])
    buf = io.BytesIO()
    p.save(buf, format="PNG")
    img, note = decode_image(buf.getvalue(), "p.png")
    assert note == "palette"
    assert img[0, 0].tolist() == [10, 20, 30] and img[0, 1].tolist() == [200, 100, 50]
    flat = np.full((16, 16, 3), [180, 90, 160], np.uint8)
    buf = io.BytesIO()
    Image.fromarray(flat).save(buf, format="JPEG", quality=95)
    img, note = decode_image(buf.getvalue(), "j.jpg")
    assert note is None and img.shape == (16, 16, 3)
    assert np.abs(img.astype(int) - flat).max() <= 3


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a PNG, TIFF or JPEG"),
        (None, "corrupt or truncated"),  # filled in below: a truncated real PNG
    ],
)
def test_bad_data_raises_naming_the_file(data: bytes | None, message: str) -> None:
    if data is None:
        data = _png(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))[:400]
    with pytest.raises(HistoscanInputError, match=rf"^bad/x\.png: .*{message}"):
        decode_image(data, "bad/x.png")


def test_truncated_real_tif_and_missing_file(shared_data: Path, tmp_path: Path) -> None:
    f = sorted((shared_data / "kaggle-hcd-test").glob("*.tif"))[0]
    (tmp_path / "t.tif").write_bytes(f.read_bytes()[:2000])
    with pytest.raises(HistoscanInputError, match=r"t\.tif: corrupt or truncated"):
        decode_image(tmp_path / "t.tif", "t.tif")
    with pytest.raises(HistoscanInputError, match=r"gone\.png: image file not found"):
        decode_image(tmp_path / "gone.png", "gone.png")


def test_pixel_limit_refuses_large_images() -> None:
    data = _png(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(HistoscanInputError, match="400-pixel|exceeds the 399-pixel limit"):
        decode_image(data, "big.png", max_pixels=399)
    assert decode_image(data, "big.png", max_pixels=400)[0].shape == (20, 20, 3)


def test_fit_pad_reflects_small_and_crops_large() -> None:
    img = np.random.default_rng(2).integers(0, 256, (42, 50, 3), dtype=np.uint8)
    out = fit_image(img, 50, "pad")
    assert out.shape == (50, 50, 3)
    np.testing.assert_array_equal(out[4:46], img)  # original centred, 4 rows reflected above and below
    np.testing.assert_array_equal(out[3], img[1])  # reflect (not edge-repeat): row -1 mirrors row 1
    big = np.random.default_rng(3).integers(0, 256, (100, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_image(big, 96, "pad"), big[2:98])
    assert fit_image(img[:1], 50, "pad").shape == (50, 50, 3)  # a 1-pixel-high edge patch (as in idc-breast)
    same = np.zeros((8, 8, 3), np.uint8)
    assert fit_image(same, 8, "pad") is same


def test_fit_resize_is_bilinear_to_exact_size() -> None:
    grad = np.repeat(np.repeat(np.linspace(0, 255, 50).astype(np.uint8)[None, :, None], 50, 0), 3, 2)
    out = fit_image(grad, 96, "resize")
    assert out.shape == (96, 96, 3)
    assert out[0, 0, 0] <= 3 and out[0, -1, 0] >= 252 and np.all(np.diff(out[0, :, 0].astype(int)) >= 0)


def test_load_patch_notes_and_list_images(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(_png(np.zeros((30, 40), np.uint8), "L"))
    (tmp_path / "a.PNG").write_bytes(_png(np.zeros((40, 40, 3), np.uint8)))
    (tmp_path / ".hidden" / "c.png").write_bytes(_png(np.zeros((40, 40, 3), np.uint8)))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.PNG", "sub/b.png"]
    img, notes, fitted = load_patch(tmp_path / "sub" / "b.png", "sub/b.png", 40, "pad")
    assert img.shape == (40, 40, 3) and notes == ["grey", "padded"] and fitted == "padded 40x30 -> 40x40"
    assert load_patch(tmp_path / "a.PNG", "a.PNG", 32, "resize")[1:] == (
        ["resized"],
        "resized 40x40 -> 32x32",
    )
    assert load_patch(tmp_path / "a.PNG", "a.PNG", 40, "pad")[1:] == ([], None)


def test_fit_note_names_the_change_and_both_sizes() -> None:
    from histoscan.data.images import fit_note

    assert fit_note(42, 50, 50, "pad") == "padded 50x42 -> 50x50"
    assert fit_note(96, 96, 50, "pad") == "cropped 96x96 -> 50x50"
    assert fit_note(30, 60, 50, "pad") == "padded+cropped 60x30 -> 50x50"
    assert fit_note(50, 50, 96, "resize") == "resized 50x50 -> 96x96"
    assert fit_note(50, 50, 50, "resize") is None


def test_collect_images_files_as_given_folders_expanded(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("d/b.png", "d/a.tif", "d/sub/c.jpg", "d/.hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d" / "notes.txt").write_text("x")
    files = [tmp_path / "missing.png", tmp_path / "d" / "notes.txt"]  # kept: the decoder names them
    got = collect_images([*map(str, files), tmp_path / "d"])
    assert got == [*files, tmp_path / "d" / "a.tif", tmp_path / "d" / "b.png"]
    deep = collect_images([tmp_path / "d"], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == ["d/a.tif", "d/b.png", "d/sub/c.jpg"]
    assert list_images(tmp_path / "d", recursive=False) == got[2:]
    with pytest.raises(HistoscanInputError, match="empty: folder has no PNG/TIFF/JPEG images"):
        collect_images([tmp_path / "d", tmp_path / "empty"], recursive=True)
