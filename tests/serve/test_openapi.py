"""The OpenAPI document describes every response the API really gives: each route is called in ways that give
each status it declares, the body is validated against the schema declared for that status (and content type),
and every declared (route, status) pair is produced at least once."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from histoscan.serve import ServeSettings, create_app
from histoscan.serve.batching import MicroBatcher, QueueFullError

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

KEY = {"Authorization": "Bearer s3cret"}
UPLOADS = ("/v1/predict", "/v1/explain", "/v1/preview")


def _png(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    from .test_fuzz import png_declaring

    return png_declaring(width, height)


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _check(value: Any, schema: dict, spec: dict, where: str = "body") -> None:
    """A small JSON Schema check (type, const/enum, properties/required, items, anyOf) for when jsonschema is
    not installed."""
    schema = _resolve(schema, spec)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                return _check(value, option, spec, where)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: matches no anyOf option ({errors})")
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict}
    kind = schema.get("type")
    if kind == "null":
        assert value is None, where
    elif kind == "array":
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), spec, f"{where}[{i}]")
    elif kind in types:
        assert isinstance(value, types[kind]) and not (kind != "boolean" and isinstance(value, bool)), where
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], (where, value, schema["enum"])
    if kind == "object":
        for name in schema.get("required", []):
            assert name in value, f"{where}: {name} missing"
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _check(value[name], sub, spec, f"{where}.{name}")


def validate(value: Any, schema: dict, spec: dict) -> None:
    """Validate `value` against an OpenAPI 3.1 schema of `spec` (jsonschema when installed)."""
    try:
        import jsonschema
    except ImportError:
        _check(value, schema, spec)
        return
    jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(value)


class Recorder:
    """Calls the app, checks each answer against the document, and remembers the (route, status) pairs seen."""

    def __init__(self, client: Any, spec: dict):
        self.client, self.spec, self.seen = client, spec, set()

    def __call__(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        r = self.client.request(method, path, **kwargs)
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
        route = path.split("?")[0]
        declared = self.spec["paths"][route][method.lower()]["responses"]
        assert str(status) in declared, (
            f"{method} {route} answered {status}, which the document does not declare"
        )
        answer = declared[str(status)]
        ctype = r.headers["content-type"].split(";")[0]
        assert ctype in answer["content"], (route, status, ctype, list(answer["content"]))
        schema = answer["content"][ctype].get("schema")
        assert schema, (route, status, ctype)
        if ctype == "application/json":
            validate(r.json(), schema, self.spec)
            if status >= 400:
                assert set(r.json()) == {"error", "detail"}
        for header in answer.get("headers", {}):
            assert header.lower() in r.headers, (route, status, header)
        self.seen.add((route, method.lower(), status))
        return r

    def declared(self) -> set[tuple[str, str, int]]:
        return {
            (path, method, int(status))
            for path, ops in self.spec["paths"].items()
            for method, op in ops.items()
            for status in op["responses"]
        }


@pytest.fixture
def app_factory(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Any, Recorder]]]:
    """`start(**settings) -> (app, recorder)` over the tiny run, key s3cret, raising nothing to the test."""
    from fastapi.testclient import TestClient

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    clients: list[Any] = []

    def start(**settings: Any) -> tuple[Any, Recorder]:
        app = create_app(tiny_run, ServeSettings(device="cpu", api_key="s3cret", **settings))
        client = TestClient(app, raise_server_exceptions=False).__enter__()
        clients.append(client)
        return app, Recorder(client, client.get("/openapi.json").json())

    yield start
    for c in clients:
        c.__exit__(None, None, None)


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug")


async def _full(images: np.ndarray) -> np.ndarray:
    raise QueueFullError(2, 2)


def test_no_fastapi_default_error_schema_is_left(app_factory) -> None:
    _, call = app_factory()
    schemas = call.spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for path, ops in call.spec["paths"].items():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    err = _resolve({"$ref": ref}, call.spec)
                    assert set(err["properties"]) == {"error", "detail"}, (path, status)


def test_every_declared_response_is_real_and_matches_its_schema(
    app_factory, hcd_files: list[Path], idc_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, call = app_factory(max_upload_mb=0.05, max_pixels=120 * 120, max_files=2)
    tif = hcd_files[0]
    good = [("files", (tif.name, tif.read_bytes(), "image/tiff"))]
    edge = idc_root / "images" / "14078" / "14078_idx5_x1001_y1501_class0.png"
    small = [("files", (edge.name, edge.read_bytes(), "image/png"))]
    broken = {"content": b"xx", "headers": {**KEY, "Content-Type": "multipart/form-data"}}
    call("GET", "/healthz", 200)
    call("GET", "/metrics", 200, headers=KEY)
    info = call("GET", "/v1/model", 200, headers=KEY).json()
    assert info["image_size"] == 96 and info["limits"]["max_files"] == 2
    pred = call("POST", "/v1/predict", 200, files=good + small, headers=KEY).json()["predictions"]
    assert [p["fitted"] for p in pred] == [None, "padded 50x42 -> 96x96"]
    r = call("POST", "/v1/explain?format=json", 200, files=small, headers=KEY)
    assert r.json()["fitted"] == "padded 50x42 -> 96x96"
    r = call("POST", "/v1/explain", 200, files=small, headers=KEY)
    assert r.headers["x-histoscan-fitted"] == "padded 50x42 -> 96x96"
    call("POST", "/v1/preview", 200, files=good, headers=KEY)
    for path, method in [("/metrics", "GET"), ("/v1/model", "GET"), *((p, "POST") for p in UPLOADS)]:
        call(method, path, 401, files=good if method == "POST" else None)
        call(
            method, path, 401, files=good if method == "POST" else None, headers={"Authorization": "Bearer x"}
        )
    for path in UPLOADS:
        call("POST", path, 400, **broken)
        call("POST", path, 413, files=[("files", ("big.png", _png(160, 160), "image/png"))], headers=KEY)
        call(
            "POST",
            path,
            413,
            files=[("files", ("wide.png", _png_declaring(200, 200), "image/png"))],
            headers=KEY,
        )
        call("POST", path, 415, files=[("files", ("a.txt", b"plain text", "text/plain"))], headers=KEY)
        call("POST", path, 422, data={"other": "x"}, headers=KEY)
        call("POST", path, 422, files=[("files", ("e.png", b"", "image/png"))], headers=KEY)
        call("POST", path, 422, files=[("files", ("t.png", _png(96, 96)[:80], "image/png"))], headers=KEY)
    call("POST", "/v1/predict", 413, files=good * 3, headers=KEY)  # too many files
    call("POST", "/v1/explain?format=svg", 422, files=good, headers=KEY)
    with monkeypatch.context() as m:  # a full queue
        m.setattr(app.state.batcher, "submit", _full)
        for path in ("/v1/predict", "/v1/explain"):
            assert call("POST", path, 503, files=good, headers=KEY).headers["retry-after"] == "1"
    with monkeypatch.context() as m:  # bugs: 500 with the same error shape
        m.setattr(MicroBatcher, "pending", property(_boom))
        call("GET", "/healthz", 500)
    with monkeypatch.context() as m:
        m.setattr(app.state.metrics, "render", _boom)
        m.setattr(app.state.model, "info", _boom)
        m.setattr(app.state.batcher, "submit", _boom)
        m.setattr("histoscan.serve.app._png", _boom)
        call("GET", "/metrics", 500, headers=KEY)
        call("GET", "/v1/model", 500, headers=KEY)
        for path in UPLOADS:
            call("POST", path, 500, files=good, headers=KEY)
    assert call.declared() == call.seen, {"declared, never seen": call.declared() - call.seen}


def test_onnx_like_model_declares_and_answers_501(
    app_factory, hcd_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from histoscan.inference.predictor import TorchPredictor

    # the served model asks its predictor (Predictor.require_explainable, the one rule): one that cannot explain
    monkeypatch.setattr(TorchPredictor, "can_explain", False)
    _, call = app_factory()
    assert "501" in call.spec["paths"]["/v1/explain"]["post"]["responses"]
    assert "501" not in call.spec["paths"]["/v1/predict"]["post"]["responses"]
    tif = hcd_files[0]
    r = call("POST", "/v1/explain", 501, files={"files": (tif.name, tif.read_bytes())}, headers=KEY)
    assert r.json()["error"] == "explain_unavailable"


def test_without_a_key_no_401_is_declared(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.delenv("HISTOSCAN_API_KEY", raising=False)
    with TestClient(create_app(tiny_run, ServeSettings(device="cpu"))) as c:
        spec = c.get("/openapi.json").json()
    statuses = {s for ops in spec["paths"].values() for op in ops.values() for s in op["responses"]}
    assert "401" not in statuses and {"400", "413", "415", "422", "500", "503"} <= statuses
    assert "501" not in spec["paths"]["/v1/explain"]["post"]["responses"]  # a PyTorch model explains
