"""Decode PNG/TIFF/JPEG patches to RGB uint8 and fit them to a square size (reflect-pad/crop or resize)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from histoscan.errors import HistoscanInputError

# Decompression-bomb guard: patches are small; a 50-megapixel "patch" is a mistake or an attack.
MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Fit = Literal["pad", "resize"]


def is_image_file(path: Path) -> bool:
    """Whether `path` has one of the supported image suffixes (.png, .tif, .tiff, .jpg, .jpeg)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files in `folder` (and, if `recursive`, its subfolders) in sorted order, skipping hidden files
    and folders."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        out.extend(
            Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and is_image_file(Path(f))
        )
    return out


def collect_images(items: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """The image files named on a command line: files kept as given (the decoder names a missing or
    unreadable one), folders expanded to their PNG/TIFF/JPEG images in sorted order (see `list_images`).

    Raises:
        HistoscanInputError: a folder holds no images (naming the folder).
    """
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p, recursive)
            if not found:
                raise HistoscanInputError(f"{p}: folder has no PNG/TIFF/JPEG images")
            files += found
        else:
            files.append(p)
    return files


def _read(src: Path | bytes, name: str) -> bytes:
    if isinstance(src, bytes):
        return src
    try:
        return Path(src).read_bytes()
    except FileNotFoundError:
        raise HistoscanInputError(f"{name}: image file not found") from None
    except OSError as e:
        raise HistoscanInputError(f"{name}: cannot read ({e.strerror or e})") from None


def _check_pixels(h: int, w: int, name: str, max_pixels: int | None) -> None:
    if max_pixels is not None and h * w > max_pixels:
        raise HistoscanInputError(f"{name}: {w}x{h} image exceeds the {max_pixels}-pixel limit for a patch")


def _scale_to_uint8(a: np.ndarray, name: str) -> tuple[np.ndarray, str | None]:
    """Integer/float samples of any depth -> uint8 (full-range scaling), with a note when converted."""
    if a.dtype == np.uint8:
        return a, None
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255, "1-bit"
    if np.issubdtype(a.dtype, np.unsignedinteger):
        bits = a.dtype.itemsize * 8
        scaled = np.rint(a.astype(np.float64) * (255.0 / (2**bits - 1)))
        return scaled.astype(np.uint8), f"{bits}-bit"
    if np.issubdtype(a.dtype, np.floating):
        # float images are taken as [0, 1] intensities (the common convention of tifffile/skimage writers)
        return np.rint(np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0).astype(np.uint8), "float"
    raise HistoscanInputError(f"{name}: unsupported sample type {a.dtype}")


def _to_rgb(a: np.ndarray, name: str, photometric: str = "") -> tuple[np.ndarray, list[str]]:
    """H x W, H x W x 1/2/3/4 arrays of any depth -> RGB uint8 plus the list of conversions applied."""
    notes: list[str] = []
    a, depth_note = _scale_to_uint8(a, name)
    if depth_note:
        notes.append(depth_note)
    if photometric == "miniswhite":
        a = 255 - a
        notes.append("inverted")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2), [*notes, "grey"]
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise HistoscanInputError(f"{name}: unsupported image shape {a.shape}")
    if a.shape[2] in (2, 4):
        # composite over white: transparent areas of a patch are background (glass), which is white in H&E
        alpha = a[:, :, -1:].astype(np.float32) / 255.0
        colour = a[:, :, :-1].astype(np.float32)
        a = np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        notes.append("alpha")
        if a.shape[2] == 1:
            return np.repeat(a, 3, axis=2), [*notes, "grey"]
    return np.ascontiguousarray(a), notes


def _decode_tiff(data: bytes, name: str, max_pixels: int | None) -> tuple[np.ndarray, list[str]]:
    import tifffile  # lazy: only TIFF inputs pay for it

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not tif.pages:
            raise HistoscanInputError(f"{name}: TIFF has no images")
        page = tif.pages.first
        _check_pixels(page.imagelength, page.imagewidth, name, max_pixels)
        a = page.asarray()
        axes = page.axes
        photometric = page.photometric.name.lower()
        if axes.startswith("S") and a.ndim == 3:  # planar (separate) samples -> interleaved
            a = np.moveaxis(a, 0, -1)
        if photometric == "palette":
            cmap = page.colormap  # 3 x 2**bits uint16
            if cmap is None:
                raise HistoscanInputError(f"{name}: palette TIFF without a colour map")
            rgb, _ = _scale_to_uint8(np.ascontiguousarray(cmap.T[a]), name)
            return rgb, ["palette"]
        if photometric not in ("rgb", "minisblack", "miniswhite", "ycbcr"):
            raise HistoscanInputError(f"{name}: unsupported TIFF colour space {photometric}")
        return _to_rgb(a, name, photometric)


def _decode_pillow(data: bytes, name: str, max_pixels: int | None) -> tuple[np.ndarray, list[str]]:
    if data.startswith(_PNG_MAGIC) and len(data) > 25 and data[24] == 16:
        # Pillow keeps only the high byte of 16-bit RGB PNGs; imagecodecs decodes them at full depth.
        import imagecodecs

        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        _check_pixels(h, w, name, max_pixels)
        return _to_rgb(imagecodecs.png_decode(data), name)
    with Image.open(io.BytesIO(data)) as im:
        _check_pixels(im.height, im.width, name, max_pixels)
        im.load()
        mode = im.mode
        if mode == "RGB":
            return np.asarray(im, dtype=np.uint8).copy(), []
        if mode == "P" or mode == "PA":
            rgba = im.convert("RGBA")
            a = np.asarray(rgba)
            if (a[:, :, 3] == 255).all():
                return np.ascontiguousarray(a[:, :, :3]), ["palette"]
            return _to_rgb(a, name)[0], ["palette", "alpha"]
        if mode == "CMYK" or mode == "YCbCr" or mode == "LAB":
            return np.asarray(im.convert("RGB")).copy(), [mode.lower()]
        if mode.startswith("I;16"):
            return _to_rgb(np.asarray(im).astype(np.uint16), name)
        if mode == "I":  # 32-bit int container Pillow uses for some 16-bit greyscale PNGs
            return _to_rgb(np.clip(np.asarray(im), 0, 65535).astype(np.uint16), name)
        if mode == "F":
            return _to_rgb(np.asarray(im, dtype=np.float32), name)
        if mode == "1":
            return _to_rgb(np.asarray(im), name)
        if mode in ("L", "LA", "RGBA", "RGBa", "La"):
            return _to_rgb(np.asarray(im.convert(mode.upper())), name)
        return np.asarray(im.convert("RGB")).copy(), [mode.lower()]


def decode_image(
    src: Path | bytes, name: str, max_pixels: int | None = MAX_PIXELS
) -> tuple[np.ndarray, str | None]:
    """Decode a PNG, TIFF or JPEG patch to RGB uint8.

    RGBA (composited over white), grey, 16-bit (full-range scaled), palette, CMYK and float images are
    converted; the note names the conversions applied, joined by "+" (e.g. "16-bit+grey").

    Args:
        src: file path or the encoded bytes.
        name: how the image is named in error messages (usually its path).
        max_pixels: refuse larger images (decompression bombs); None: no limit.

    Returns:
        (H x W x 3 uint8 array, note or None when the file already was 8-bit RGB).

    Raises:
        HistoscanInputError: missing, corrupt, truncated or unsupported data, naming `name`.
    """
    data = _read(src, name)
    if not data:
        raise HistoscanInputError(f"{name}: empty file")
    try:
        if data[:4] in _TIFF_MAGIC:
            img, notes = _decode_tiff(data, name, max_pixels)
        else:
            img, notes = _decode_pillow(data, name, max_pixels)
    except HistoscanInputError:
        raise
    except UnidentifiedImageError:
        raise HistoscanInputError(f"{name}: not a PNG, TIFF or JPEG image") from None
    except Image.DecompressionBombError as e:
        raise HistoscanInputError(f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, IndexError, RuntimeError, EOFError) as e:
        # Pillow/tifffile/imagecodecs signal corrupt or truncated streams with these
        raise HistoscanInputError(
            f"{name}: corrupt or truncated image ({str(e).splitlines()[0][:120]})"
        ) from None
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise HistoscanInputError(f"{name}: image has no pixels")
    return img, "+".join(notes) if notes else None


def image_size(src: Path, name: str) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with open(src, "rb") as f:
            head = f.read(4)
            f.seek(0)
            if head in _TIFF_MAGIC:
                import tifffile

                with tifffile.TiffFile(f) as tif:
                    page = tif.pages.first
                    return int(page.imagelength), int(page.imagewidth)
            with Image.open(f) as im:
                return im.height, im.width
    except FileNotFoundError:
        raise HistoscanInputError(f"{name}: image file not found") from None
    except UnidentifiedImageError:
        raise HistoscanInputError(f"{name}: not a PNG, TIFF or JPEG image") from None
    except (OSError, ValueError, IndexError, SyntaxError, EOFError) as e:
        raise HistoscanInputError(f"{name}: corrupt image header ({str(e).splitlines()[0][:120]})") from None


def fit_image(img: np.ndarray, size: int, fit: Fit = "pad") -> np.ndarray:
    """Fit an H x W x 3 image to size x size x 3.

    Args:
        img: uint8 RGB image.
        size: target side in pixels.
        fit: "pad" reflect-pads sides shorter than `size` and centre-crops longer ones (no resampling, so the
            pixel scale is kept); "resize" resamples bilinearly (antialiased when shrinking) to size x size.

    Returns:
        A C-contiguous uint8 size x size x 3 array (the input itself when it already fits).
    """
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    if fit == "resize":
        return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    if fit != "pad":
        raise HistoscanInputError(f"--fit: unknown value {fit!r} (use pad or resize)")
    top, left = max(h - size, 0) // 2, max(w - size, 0) // 2
    img = img[top : top + size, left : left + size]
    h, w = img.shape[:2]
    if (h, w) != (size, size):
        ph, pw = size - h, size - w
        mode = "reflect" if min(h, w) > 1 else "edge"  # reflect needs two pixels on an axis
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)
    return np.ascontiguousarray(img)


def fit_kind(h: int, w: int, size: int, fit: Fit = "pad") -> str | None:
    """How an h x w image is fitted to size x size: "resized", "padded", "cropped", "padded+cropped" or None."""
    if (h, w) == (size, size):
        return None
    if fit == "resize":
        return "resized"
    return "padded" if h <= size and w <= size else "cropped" if h >= size and w >= size else "padded+cropped"


def fit_note(h: int, w: int, size: int, fit: Fit = "pad") -> str | None:
    """What fitting an h x w image to `size` does, e.g. "padded 50x42 -> 50x50" (width x height); None when
    the image already has the size."""
    kind = fit_kind(h, w, size, fit)
    return f"{kind} {w}x{h} -> {size}x{size}" if kind else None


def load_patch(
    path: Path, name: str, size: int, fit: Fit = "pad"
) -> tuple[np.ndarray, list[str], str | None]:
    """Decode and fit one file: (size x size x 3 uint8, notes, fitted) where notes are the conversion (if any)
    and "padded"/"cropped"/"resized" when the size differed, and fitted is its `fit_note` (None: no fit)."""
    img, note = decode_image(path, name)
    notes = [note] if note else []
    h, w = img.shape[:2]
    kind = fit_kind(h, w, size, fit)
    if kind:
        notes.append(kind)
    return fit_image(img, size, fit), notes, fit_note(h, w, size, fit)
