"""Fuzzing the upload endpoints: hundreds of malformed requests get JSON 4xx answers, never 5xx."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Pillow's warnings about the corrupt files fed here
]

ENDPOINTS = ("/v1/predict", "/v1/explain", "/v1/preview")


def _field(endpoint: str) -> str:
    return "files" if endpoint == "/v1/predict" else "file"


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG stream whose IHDR declares width x height (its IDAT holds a few bytes only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian baseline RGB TIFF whose IFD declares width x height over a 12-byte strip."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 0),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, 12),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_at = 8 + ifd_size
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = strip_at if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    return out + struct.pack("<I", 0) + bytes(12)


def jpeg_declaring(real_jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG with its SOF0 frame header patched to declare width x height."""
    i = real_jpeg.index(b"\xff\xc0")
    return real_jpeg[: i + 5] + struct.pack(">HH", height, width) + real_jpeg[i + 9 :]


def _encode(a: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def malformed_requests(
    rng: random.Random, samples: dict[str, bytes]
) -> list[tuple[str, str, dict[str, Any]]]:
    """(description, endpoint, httpx request kwargs) for requests that must all be refused with a 4xx."""
    cases: list[tuple[str, str, dict[str, Any]]] = []

    def upload(desc: str, data: bytes, name: str = "x.png", ctype: str = "image/png") -> None:
        ep = rng.choice(ENDPOINTS)
        cases.append((desc, ep, {"files": [(_field(ep), (name, data, ctype))]}))

    for i in range(60):
        upload(
            f"random bytes #{i}",
            rng.randbytes(rng.randint(1, 3000)),
            rng.choice(["a.png", "b.tif", "c"]),
            rng.choice(["image/png", "image/tiff", "image/jpeg", "application/octet-stream"]),
        )
    magics = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00"]
    for i in range(40):
        upload(f"magic + garbage #{i}", rng.choice(magics) + rng.randbytes(rng.randint(0, 400)))
    for i in range(50):
        fmt = rng.choice(sorted(samples))
        data = samples[fmt]
        upload(f"truncated {fmt} #{i}", data[: rng.randint(1, len(data) // 2)], f"t.{fmt}", f"image/{fmt}")
    for _ in range(3):
        upload("zero bytes", b"")
    for w, h in [(100_000, 100_000), (50_000, 1), (1, 2**31 - 1), (65_535, 65_535), (0, 10), (4097, 4097)]:
        upload(f"PNG declaring {w}x{h}", png_declaring(w, h))
    for w, h in [(100_000, 100_000), (65_536, 65_536), (5000, 5000)]:
        upload(f"TIFF declaring {w}x{h}", tiff_declaring(w, h), "big.tif", "image/tiff")
    for w, h in [(65_500, 65_500), (20_000, 20_000)]:
        upload(f"JPEG declaring {w}x{h}", jpeg_declaring(samples["jpeg"], w, h), "big.jpg", "image/jpeg")
    for ctype in ["text/plain", "application/pdf", "image/gif", "image/png"]:
        upload(f"GIF as {ctype}", _encode(np.zeros((8, 8, 3), np.uint8), "GIF"), "a.gif", ctype)
        upload(f"BMP as {ctype}", _encode(np.zeros((8, 8, 3), np.uint8), "BMP"), "a.bmp", ctype)
        upload(f"text as {ctype}", b"tumour? no, this is text", "a.txt", ctype)
    for ep in ENDPOINTS:
        f = _field(ep)
        cases += [
            (f"text field instead of a file ({ep})", ep, {"data": {f: "not a file"}}),
            (f"missing field ({ep})", ep, {"files": [("other", ("a.png", samples["png"], "image/png"))]}),
            (f"no body ({ep})", ep, {}),
            (f"JSON body ({ep})", ep, {"json": {f: "abc"}}),
            (f"urlencoded body ({ep})", ep, {"data": {"x": "1"}}),
            (
                f"multipart without boundary ({ep})",
                ep,
                {"content": b"--x\r\n\r\n", "headers": {"Content-Type": "multipart/form-data"}},
            ),
            (
                f"broken multipart ({ep})",
                ep,
                {
                    "content": b'--b\r\nContent-Disposition: form-data; name="'
                    + f.encode()
                    + b'"; filename="a.png"'
                    b"\r\n\r\n\x89PNG",
                    "headers": {"Content-Type": "multipart/form-data; boundary=b"},
                },
            ),
            (
                f"random multipart body ({ep})",
                ep,
                {
                    "content": rng.randbytes(500),
                    "headers": {"Content-Type": "multipart/form-data; boundary=zz"},
                },
            ),
        ]
    for i in range(10):
        ep = "/v1/predict"
        good = ("files", ("ok.tif", samples["tiff"], "image/tiff"))
        bad = ("files", (f"bad{i}.png", rng.randbytes(100), "image/png"))
        cases.append((f"one bad file among good ones #{i}", ep, {"files": [good, bad, good]}))
    for i in range(10):
        ep = rng.choice(ENDPOINTS)
        cases.append((f"wrong method #{i}", ep, {"method": rng.choice(["GET", "PUT", "DELETE", "PATCH"])}))
    cases.append(
        (
            "explain with two files",
            "/v1/explain",
            {"files": [("file", ("a.txt", b"x", "text/plain"))] * 2, "params": {"format": "gif"}},
        )
    )
    return cases


@pytest.fixture(scope="module")
def samples(hcd_files: list[Path]) -> dict[str, bytes]:
    img = np.asarray(Image.open(hcd_files[0]).convert("RGB"))
    return {"tiff": hcd_files[0].read_bytes(), "png": _encode(img, "PNG"), "jpeg": _encode(img, "JPEG")}


def test_tiff_builder_declares_its_size() -> None:
    with Image.open(io.BytesIO(tiff_declaring(123, 45))) as im:
        assert im.size == (123, 45)
    with Image.open(io.BytesIO(png_declaring(123, 45))) as im:
        assert im.size == (123, 45)
    with pytest.raises(Image.DecompressionBombError):  # Pillow itself would refuse it as a bomb
        Image.open(io.BytesIO(png_declaring(100_000, 100_000)))


def test_malformed_uploads_get_4xx_json(client, samples: dict[str, bytes]) -> None:
    rng = random.Random(20240601)
    cases = malformed_requests(rng, samples)
    assert len(cases) >= 200
    statuses: dict[int, int] = {}
    answers: dict[str, int] = {}
    for desc, ep, kw in cases:
        method = kw.pop("method", "POST")
        r = client.request(method, ep, **kw)
        assert 400 <= r.status_code < 500, f"{desc} -> {r.status_code} {r.text[:200]}"
        body = r.json()
        assert set(body) == {"error", "detail"} and body["detail"], f"{desc} -> {body}"
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        answers[desc] = r.status_code
    # declared sizes over the pixel limit (4096 x 4096) are refused as too large, before any decoding
    bombs = [d for d in answers if " declaring " in d]
    too_large = {d for d in bombs if np.prod([int(x) for x in d.rsplit(" ", 1)[1].split("x")]) > 4096 * 4096}
    assert len(too_large) == 9 and all(answers[d] == 413 for d in too_large)
    assert all(answers[d] == 422 for d in set(bombs) - too_large)  # small or empty declared size: corrupt
    assert answers["zero bytes"] == 422 and statuses.get(415, 0) >= 20
    assert client.get("/healthz").json()["status"] == "ok"
    ok = client.post("/v1/predict", files=[("files", ("ok.tif", samples["tiff"], "image/tiff"))])
    assert ok.status_code == 200 and 0.0 <= ok.json()["predictions"][0]["probability"] <= 1.0
    metrics = client.get("/metrics").text
    assert 'kind="server"' not in metrics


def test_bomb_is_refused_before_decoding(client) -> None:
    r = client.post(
        "/v1/predict", files=[("files", ("bomb.png", png_declaring(100_000, 100_000), "image/png"))]
    )
    assert r.status_code == 413 and r.json()["error"] == "image_too_large"
    assert "100000x100000" in r.json()["detail"] and "bomb.png" in r.json()["detail"]


def test_mutated_images_never_5xx(client, samples: dict[str, bytes]) -> None:
    """Bytes flipped in real images: some still decode (200), the rest are refused; none is a server error."""
    rng = random.Random(7)
    answered = set()
    for i in range(60):
        data = bytearray(samples[rng.choice(sorted(samples))])
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        r = client.post("/v1/predict", files=[("files", (f"m{i}", bytes(data), "image/png"))])
        assert r.status_code == 200 or 400 <= r.status_code < 500, f"mutation {i} -> {r.status_code} {r.text}"
        answered.add(r.status_code)
    assert 200 in answered and client.get("/healthz").status_code == 200
