"""HTTP API of histoscan.serve.app: predictions equal the model's, model info, metrics, auth, limits, 503."""

from __future__ import annotations

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoscan.data.images import decode_image, fit_image
from histoscan.inference.predictor import load_predictor
from histoscan.serve import ServeSettings, create_app

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def png_bytes(a: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format="PNG")
    return buf.getvalue()


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "image/tiff")) for p in paths]


def _expected(run: Path, data: bytes, name: str) -> float:
    model = load_predictor(run)
    img, _ = decode_image(data, name)
    return float(model.predict_proba(fit_image(img, model.card.image_size, model.card.fit)[None])[0])


def _counter(text: str, endpoint: str, status: int) -> int:
    m = re.search(
        rf'histoscan_requests_total\{{endpoint="{re.escape(endpoint)}",method="[A-Z]+",status="{status}"\}} '
        r"(\d+)",
        text,
    )
    return int(m.group(1)) if m else 0


def test_predict_one_matches_loaded_model(client, tiny_run: Path, hcd_files: list[Path]) -> None:
    f = hcd_files[0]
    r = client.post("/v1/predict", files=_files([f]))
    assert r.status_code == 200, r.text
    body = r.json()
    (pred,) = body["predictions"]
    assert pred["id"] == f.stem and pred["filename"] == f.name
    assert pred["probability"] == pytest.approx(_expected(tiny_run, f.read_bytes(), f.name), abs=1e-6)
    assert pred["threshold"] == 0.5 and pred["label"] == int(pred["probability"] >= 0.5)
    assert pred["class"] == ("tumour" if pred["label"] else "normal")
    assert pred["model_version"] == body["model_version"] and body["model_version"].startswith("tiny-run@")
    assert (pred["width"], pred["height"], pred["note"], pred["fitted"]) == (96, 96, None, None)


def test_predict_many_in_order(client, tiny_run: Path, hcd_files: list[Path]) -> None:
    files = hcd_files[:6]
    r = client.post("/v1/predict", files=_files(files))
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["id"] for p in preds] == [f.stem for f in files]
    model = load_predictor(tiny_run)
    batch = np.stack([decode_image(f.read_bytes(), f.name)[0] for f in files])
    np.testing.assert_allclose([p["probability"] for p in preds], model.predict_proba(batch), atol=1e-6)
    assert len({round(p["probability"], 9) for p in preds}) == len(files)  # real images, distinct outputs


def test_other_size_is_fitted_as_in_training(client, tiny_run: Path, idc_root: Path) -> None:
    png = next(idc_root.rglob("*.png"))
    data = png.read_bytes()
    img, _ = decode_image(data, png.name)
    assert img.shape[:2] != (96, 96)
    r = client.post("/v1/predict", files=[("files", (png.name, data, "image/png"))])
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert (pred["width"], pred["height"]) == (img.shape[1], img.shape[0])
    assert pred["probability"] == pytest.approx(_expected(tiny_run, data, png.name), abs=1e-6)
    assert pred["fitted"] == f"padded {img.shape[1]}x{img.shape[0]} -> 96x96"  # said, not silent
    big = png_bytes(np.zeros((120, 80, 3), np.uint8))
    r = client.post("/v1/predict", files=[("files", ("big.png", big, "image/png"))])
    assert r.json()["predictions"][0]["fitted"] == "padded+cropped 80x120 -> 96x96"


def test_rgba_png_is_converted_with_a_note(client) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (96, 96, 4), dtype=np.uint8)
    r = client.post("/v1/predict", files=[("files", ("a.png", png_bytes(rgba, "RGBA"), "image/png"))])
    assert r.status_code == 200 and r.json()["predictions"][0]["note"] == "alpha"


def test_model_info(tmp_path: Path, make_run, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    run = make_run(tmp_path / "run-a", threshold=0.37)
    with TestClient(create_app(run, ServeSettings(device="cpu", max_batch=8))) as c:
        info = c.get("/v1/model").json()
    assert info["name"] == "simple-cnn" and info["backend"] == "torch" and info["device"] == "cpu"
    assert (info["image_size"], info["mpp"], info["threshold"], info["fit"]) == (96, 0.972, 0.37, "pad")
    assert re.fullmatch(r"run-a@[0-9a-f]{12}", info["version"])
    assert info["explain"] is True and info["limits"]["max_batch"] == 8


def test_health_docs_and_page(client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_metrics_counters_move(client, hcd_files: list[Path]) -> None:
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.post("/v1/predict", files=_files(hcd_files[:2])).status_code == 200
    assert client.post("/v1/predict", files=[("files", ("x.png", b"nope", "image/png"))]).status_code == 415
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert _counter(text, "/v1/predict", 200) == _counter(before, "/v1/predict", 200) + 3
    assert _counter(text, "/v1/predict", 415) == _counter(before, "/v1/predict", 415) + 1
    assert re.search(r'histoscan_request_errors_total\{endpoint="/v1/predict",kind="client"\} 1\b', text)
    assert re.search(r'histoscan_request_duration_seconds_count\{endpoint="/v1/predict"\} 4\b', text)
    assert re.search(r"histoscan_images_total 6\b", text)
    assert "# TYPE histoscan_request_duration_seconds histogram" in text


def test_api_key(tiny_run: Path, hcd_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("HISTOSCAN_API_KEY", "s3cret")
    with TestClient(create_app(tiny_run, ServeSettings(device="cpu"))) as c:
        assert c.get("/healthz").status_code == 200  # liveness stays open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/v1/predict", files=_files(hcd_files[:1]), headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model").status_code == 401 and c.get("/metrics").status_code == 401
        spec = c.get("/openapi.json").json()  # /docs offers "Authorize" with the same header
        assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": spec["components"]["securitySchemes"]["HTTPBearer"]["description"],
        }
        assert {"HTTPBearer": []} in spec["paths"]["/v1/predict"]["post"]["security"]
        assert "Authorization: Bearer <key>" in spec["info"]["description"]
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/predict", files=_files(hcd_files[:1]), headers=ok).status_code == 200
        assert c.get("/v1/model", headers=ok).status_code == 200


def test_upload_size_cap(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    big = png_bytes(np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8))
    assert len(big) > 20_000
    with TestClient(create_app(tiny_run, ServeSettings(device="cpu", max_upload_mb=0.02))) as c:
        r = c.post("/v1/predict", files=[("files", ("big.png", big, "image/png"))])
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        assert "--max-upload-mb" in r.json()["detail"]

        def chunks():  # no Content-Length: the cap must hold while the body streams
            yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]
            yield b"\r\n--b--\r\n"

        r = c.post(
            "/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        small = png_bytes(np.zeros((96, 96, 3), np.uint8))
        assert c.post("/v1/predict", files=[("files", ("s.png", small, "image/png"))]).status_code == 200


def test_pixel_limit_and_file_count(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    img = png_bytes(np.zeros((200, 200, 3), np.uint8))
    with TestClient(
        create_app(tiny_run, ServeSettings(device="cpu", max_pixels=100 * 100, max_files=3))
    ) as c:
        r = c.post("/v1/predict", files=[("files", ("wide.png", img, "image/png"))])
        assert (
            r.status_code == 413
            and r.json()["error"] == "image_too_large"
            and "wide.png" in r.json()["detail"]
        )
        small = png_bytes(np.zeros((50, 50, 3), np.uint8))
        r = c.post("/v1/predict", files=[("files", (f"{i}.png", small, "image/png")) for i in range(4)])
        assert r.status_code == 413 and r.json()["error"] == "too_many_files"


def test_full_queue_answers_503_with_retry_after(
    tiny_run: Path, hcd_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    app = create_app(tiny_run, ServeSettings(device="cpu", max_batch=1, max_wait_ms=0, queue_size=2))
    batcher, started, release = app.state.batcher, threading.Event(), threading.Event()
    real = batcher.fn

    def slow(x: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(20)
        return real(x)

    batcher.fn = slow
    with TestClient(app) as c, ThreadPoolExecutor(3) as pool:
        post = lambda: c.post("/v1/predict", files=_files(hcd_files[:1]))  # noqa: E731
        first = pool.submit(post)
        assert started.wait(10)  # the first image is being inferred, the queue is empty again
        waiting = [pool.submit(post), pool.submit(post)]
        deadline = time.monotonic() + 10
        while batcher.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.pending == 2
        r = post()
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded"
        release.set()
        assert [f.result(20).status_code for f in [first, *waiting]] == [200, 200, 200]
        assert _counter(c.get("/metrics").text, "/v1/predict", 503) == 1


def test_json_errors(client) -> None:
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.json() == {"error": "not_found", "detail": "Not Found"}
    r = client.get("/v1/predict")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = client.post("/v1/predict", data={"other": "x"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "files" in r.json()["detail"]
    r = client.post("/v1/explain?format=svg", files={"file": ("a.png", b"x", "image/png")})
    assert r.status_code == 422 and "format" in r.json()["detail"]


def test_explain_returns_gradcam_png(client, hcd_files: list[Path]) -> None:
    f = hcd_files[1]
    r = client.post("/v1/explain", files={"files": (f.name, f.read_bytes(), "image/tiff")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    fig = Image.open(io.BytesIO(r.content))
    assert fig.width > 2 * 256 and fig.height > 256  # patch | overlay panels, upscaled to >= 256 px
    prob = float(r.headers["x-histoscan-probability"])
    pred = client.post("/v1/predict", files=_files([f])).json()["predictions"][0]
    assert prob == pytest.approx(pred["probability"], abs=1e-6) and r.headers["x-histoscan-id"] == f.stem
    j = client.post("/v1/explain?format=json", files={"files": (f.name, f.read_bytes())}).json()
    overlay = Image.open(io.BytesIO(__import__("base64").b64decode(j["overlay"].split(",", 1)[1])))
    assert overlay.size == (288, 288)  # 96 px nearest-upscaled x3
    assert np.asarray(overlay).std() > 5


def test_one_image_endpoints_take_files_and_the_alias_file(client, hcd_files: list[Path]) -> None:
    f = hcd_files[1]
    up = (f.name, f.read_bytes(), "image/tiff")
    for ep in ("/v1/explain?format=json", "/v1/preview"):
        canonical, alias = client.post(ep, files={"files": up}), client.post(ep, files={"file": up})
        assert canonical.status_code == alias.status_code == 200, (ep, canonical.text, alias.text)
        assert canonical.content == alias.content
        for files, got in (
            ([("other", up)], 0),
            ([("files", up), ("file", up)], 2),
            ([("files", up)] * 2, 2),
        ):
            r = client.post(ep, files=files)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", (ep, r.text)
            assert r.json()["detail"].startswith("files:") and f"got {got}" in r.json()["detail"]
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/explain", "/v1/preview"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        fields = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
        assert "files" in fields and not fields["files"].get("deprecated"), path
        if path != "/v1/predict":  # the old name stays, documented as a deprecated alias
            assert (
                fields["file"]["deprecated"] is True and "alias of `files`" in fields["file"]["description"]
            )


def test_onnx_model_predicts_and_refuses_explain(
    tiny_run: Path, tmp_path: Path, hcd_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from histoscan.export.onnx import export_onnx
    from histoscan.inference.onnx import OnnxPredictor

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    rng = np.random.default_rng(0)
    onnx = export_onnx(
        tiny_run, tmp_path / "tiny.onnx", check_images=rng.integers(0, 256, (4, 96, 96, 3), np.uint8)
    )
    with TestClient(create_app(onnx, ServeSettings(device="cpu"))) as c:
        info = c.get("/v1/model").json()
        assert (info["backend"], info["explain"], info["image_size"], info["threshold"]) == (
            "onnxruntime",
            False,
            96,
            0.5,
        )
        assert re.fullmatch(r"tiny@[0-9a-f]{12}", info["version"])
        files = hcd_files[:3]
        preds = c.post("/v1/predict", files=_files(files)).json()["predictions"]
        batch = np.stack([decode_image(f.read_bytes(), f.name)[0] for f in files])
        np.testing.assert_allclose(
            [p["probability"] for p in preds], OnnxPredictor(onnx).predict_proba(batch), atol=1e-6
        )
        r = c.post("/v1/explain", files={"file": (files[0].name, files[0].read_bytes())})
        assert r.status_code == 501 and r.json()["error"] == "explain_unavailable"
        assert "run folder or .ckpt" in r.json()["detail"]
        preview = c.post("/v1/preview", files={"file": (files[0].name, files[0].read_bytes())})
        assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == (96, 96)


def test_cli_bad_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from histoscan.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # outside its range (ServeSettings): stops at parsing
        main(["serve", str(tmp_path), "--max-batch", "0"])
    assert stop.value.code == 2
