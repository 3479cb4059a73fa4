"""Checks on uploaded images before decoding: format by magic bytes, declared size against a pixel limit."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np

from histoscan.errors import HistoscanInputError

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",  # BigTIFF
    b"MM\x00+": "tiff",
}


class UploadError(HistoscanInputError):
    """An upload the server refuses; `status` is the HTTP status (413 too big, 415 format, 422 unreadable)."""

    def __init__(self, message: str, status: int = 422, code: str = "invalid_image"):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Upload:
    """One decoded, fitted upload."""

    id: str
    filename: str
    format: str
    width: int
    height: int
    image: np.ndarray  # S x S x 3 uint8, fitted as in training
    note: str | None = None  # colour/depth conversion, e.g. "alpha"
    fitted: str | None = None  # how it was fitted to the model's size, e.g. "padded 50x42 -> 96x96"


def image_id(filename: str | None, index: int) -> str:
    """The id of an upload: its file name's stem (any folder part dropped), else `image-<index>`."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name  # clients may send C:\\x\\y.png
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem.strip() or f"image-{index}"


def sniff_format(data: bytes, name: str) -> str:
    """'png' | 'jpeg' | 'tiff' from the first bytes; UploadError(415) for anything else, 422 for no bytes."""
    if not data:
        raise UploadError(f"{name}: empty file", 422, "empty_file")
    for magic, fmt in _MAGIC.items():
        if data.startswith(magic):
            return fmt
    raise UploadError(
        f"{name}: not a PNG, TIFF or JPEG image (unrecognised file signature)", 415, "unsupported_media_type"
    )


def declared_size(data: bytes, fmt: str, name: str) -> tuple[int, int]:
    """(width, height) the file declares, read from its header only (nothing is decoded)."""
    if fmt == "png":  # IHDR is the first chunk: read it directly, PIL would not be faster
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise UploadError(f"{name}: truncated PNG (no IHDR header)")
        return struct.unpack(">II", data[16:24])
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: parses the header, decodes nothing
            return im.size
    except Image.DecompressionBombError as e:  # > 2x PIL's limit (~179 Mpx): far over any sane limit
        raise UploadError(f"{name}: {e}", 413, "image_too_large") from None
    except Exception:
        pass
    if fmt == "tiff":  # tifffile reads what PIL's header parser does not (BigTIFF, some tilings)
        try:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages.first
                return int(page.imagewidth), int(page.imagelength)
        except Exception:
            pass
    raise UploadError(f"{name}: corrupt or truncated {fmt.upper()} header")


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """UploadError(413) when the declared image is larger than `max_pixels` (decompression bombs)."""
    if width <= 0 or height <= 0:
        raise UploadError(f"{name}: image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise UploadError(
            f"{name}: image declares {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}",
            413,
            "image_too_large",
        )


def read_upload(
    data: bytes, filename: str | None, index: int, size: int, fit: str, max_pixels: int
) -> Upload:
    """Sniff, check the declared size, decode and fit one upload (CPU work: call it from a thread).

    Raises:
        UploadError: 415 (not PNG/TIFF/JPEG), 413 (too many pixels), 422 (corrupt, truncated, empty).
    """
    from histoscan.data.images import decode_image, fit_image, fit_note

    name = filename or f"files[{index}]"
    fmt = sniff_format(data, name)
    width, height = declared_size(data, fmt, name)
    check_pixels(width, height, max_pixels, name)
    try:
        img, note = decode_image(data, name, max_pixels=max_pixels)
    except UploadError:
        raise
    except HistoscanInputError as e:
        raise UploadError(str(e)) from None
    except Exception as e:  # a decoder's own error on hostile input is still the file's fault
        raise UploadError(f"{name}: cannot decode {fmt.upper()} ({type(e).__name__}: {e})") from None
    if img.shape[0] * img.shape[1] > max_pixels:  # a header that lied about its size
        check_pixels(img.shape[1], img.shape[0], max_pixels, name)
    h, w = int(img.shape[0]), int(img.shape[1])
    fitted = np.ascontiguousarray(fit_image(img, size, fit))
    return Upload(
        image_id(filename, index), filename or "", fmt, w, h, fitted, note, fit_note(h, w, size, fit)
    )
