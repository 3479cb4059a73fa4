"""The FastAPI application: /v1/predict, /v1/explain, /v1/model, /healthz, /metrics and the web page at /."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from histoscan import __version__
from histoscan.errors import HistoscanInputError
from histoscan.inference.base import ExplainUnavailable
from histoscan.serve.backend import ServedModel, load_served_model
from histoscan.serve.batching import MicroBatcher, QueueFullError
from histoscan.serve.docs import add_docs
from histoscan.serve.guard import BodyTooLarge, RequestGuard, error_body
from histoscan.serve.metrics import CONTENT_TYPE, ServerMetrics
from histoscan.serve.schemas import ExplainResponse, Health, ModelInfo, PredictResponse, error_responses
from histoscan.serve.settings import ServeSettings
from histoscan.serve.uploads import Upload, UploadError, read_upload
from histoscan.utils.numeric import sigmoid

log = logging.getLogger(__name__)

API_KEY_ENV = "HISTOSCAN_API_KEY"
MODEL_ENV = "HISTOSCAN_SERVE_MODEL"
SETTINGS_ENV = "HISTOSCAN_SERVE_SETTINGS"
STATIC = resources.files("histoscan.serve") / "static"
# every upload endpoint takes its images in the field `files`; /v1/explain and /v1/preview (one image) also
# accept the older name `file`
ONE_FILE = File(description="one PNG/TIFF/JPEG patch (the field name of /v1/predict)")
ONE_FILE_ALIAS = File(description="alias of `files`, kept for older clients", deprecated=True)


def create_app(model_path: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving MODEL (run folder, .ckpt or .onnx); the model loads now, the batcher on startup.

    Raises:
        HistoscanInputError: MODEL cannot be loaded.
    """
    settings = settings or ServeSettings()
    api_key = settings.api_key if settings.api_key is not None else os.environ.get(API_KEY_ENV) or None
    model = load_served_model(model_path, settings.device)
    metrics = ServerMetrics()
    batcher = MicroBatcher(
        model.predict_logits,
        settings.max_batch,
        settings.max_wait_ms,
        settings.queue_size,
        observer=metrics.observe_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # before serving, not beside it: imports in a thread while requests are handled can hit CPython's
        # "AST constructor recursion depth mismatch" (compiling in two threads at once, gh-106905)
        await asyncio.to_thread(model.warmup)
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="histoscan",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from add_docs: assets served here, nothing from a CDN
        redoc_url=None,
        description="Tumour/normal probabilities and Grad-CAM for H&E patches. Upload images as "
        "multipart/form-data in the field `files` (every endpoint). "
        + (
            "This server needs its API key: send `Authorization: Bearer <key>` (or use Authorize)."
            if api_key
            else "No API key is set: requests need no `Authorization` header."
        ),
    )
    app.state.model = model
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.settings = settings
    app.add_middleware(RequestGuard, metrics=metrics, max_body=settings.max_upload_bytes)
    _add_error_handlers(app, settings)
    add_docs(app)
    auth = [Depends(_bearer(api_key))]
    # the error statuses each route really answers (401 only with a key; 501 only for an ONNX model)
    key = (401,) if api_key else ()
    upload_errors = (400, *key, 413, 415, 422, 500)
    png = {"schema": {"type": "string", "format": "binary"}}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/healthz", tags=["ops"], response_model=Health, responses=error_responses(500))
    async def healthz() -> dict[str, Any]:
        """Liveness: answers while the event loop runs (no key needed)."""
        return {"status": "ok", "model": model.version, "queue": batcher.pending}

    @app.get(
        "/metrics",
        tags=["ops"],
        dependencies=auth,
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},  # version=0.0.4
                "description": "Prometheus text",
            },
            **error_responses(*key, 500),
        },
    )
    async def prom_metrics() -> Response:
        """Prometheus text format: requests by endpoint/status, errors, latency and batch-size histograms."""
        gauges = {
            "queue_images": ("Images waiting for inference.", batcher.pending),
            "queue_capacity": ("Images the queue holds at most.", settings.queue_size),
        }
        return Response(metrics.render(gauges), media_type=CONTENT_TYPE)

    @app.get(
        "/v1/model",
        tags=["model"],
        dependencies=auth,
        response_model=ModelInfo,
        responses=error_responses(*key, 500),
    )
    async def model_info() -> dict[str, Any]:
        """Model name, version, backend, input size, µm/px, decision threshold and the server's limits."""
        limits = {k: getattr(settings, k) for k in ("max_upload_mb", "max_pixels", "max_files", "max_batch")}
        return {**model.info(), "histoscan": __version__, "limits": limits}

    @app.post(
        "/v1/predict",
        tags=["model"],
        dependencies=auth,
        response_model=PredictResponse,
        responses=error_responses(*upload_errors, 503),
    )
    async def predict(
        files: Annotated[list[UploadFile], File(description="PNG/TIFF/JPEG patches (field may repeat)")],
    ) -> dict[str, Any]:
        """Tumour probability and label per uploaded patch, fitted to the model's size as in training (each
        prediction's `fitted` says how: padded, cropped or resized, with both sizes; null when it fitted)."""
        if len(files) > min(settings.max_files, settings.queue_size):
            raise UploadError(
                f"files: {len(files)} images in one request, over the limit of "
                f"{min(settings.max_files, settings.queue_size)}",
                413,
                "too_many_files",
            )
        uploads = [await _read(f, i, model, settings) for i, f in enumerate(files)]
        logits = await batcher.submit(np.stack([u.image for u in uploads]))
        probs = sigmoid(logits)
        return {
            "model": model.name,
            "model_version": model.version,
            "threshold": model.threshold,
            "predictions": [_prediction(u, float(p), model) for u, p in zip(uploads, probs, strict=True)],
        }

    @app.post(
        "/v1/explain",
        tags=["model"],
        dependencies=auth,
        responses={
            200: {
                "content": {"image/png": png},
                "model": ExplainResponse,
                "description": "Grad-CAM figure (PNG), or with format=json the prediction and data URLs",
            },
            **error_responses(*upload_errors, *(() if model.can_explain else (501,)), 503),
        },
    )
    async def explain(
        files: Annotated[list[UploadFile] | None, ONE_FILE] = None,
        file: Annotated[list[UploadFile] | None, ONE_FILE_ALIAS] = None,
        format: Annotated[
            Literal["png", "json"],
            Query(
                description="png: the figure (patch | overlay, as "
                "`histoscan explain` writes); json: prediction + data "
                "URLs of figure, overlay and fitted patch"
            ),
        ] = "png",
    ) -> Response:
        """Grad-CAM overlay of one patch; the prediction travels in X-Histoscan-* headers (or the JSON)."""
        model.require_explain()  # 501 before reading the upload
        up = await _read(_single(files, file), 0, model, settings)
        prob = float(sigmoid((await batcher.submit(up.image[None]))[0]))
        pred = _prediction(up, prob, model)
        figure, overlay = await run_in_threadpool(model.explain, up.image, prob, up.id)
        if format == "json":
            return JSONResponse(
                {
                    **pred,
                    "overlay": _data_url(overlay),
                    "figure": _data_url(figure),
                    "image": _data_url(_png(up.image)),
                }
            )
        headers = {
            "X-Histoscan-Id": pred["id"].encode("ascii", "replace").decode(),
            "X-Histoscan-Probability": repr(prob),
            "X-Histoscan-Label": str(pred["label"]),
            "X-Histoscan-Threshold": repr(model.threshold),
            "X-Histoscan-Model-Version": model.version,
        }
        if up.fitted:  # the image had another size than the model's
            headers["X-Histoscan-Fitted"] = up.fitted
        return Response(figure, media_type="image/png", headers=headers)

    @app.post(
        "/v1/preview",
        tags=["model"],
        dependencies=auth,
        response_class=Response,
        responses={
            200: {"content": {"image/png": png}, "description": "fitted patch (PNG)"},
            **error_responses(*upload_errors),
        },
    )
    async def preview(
        files: Annotated[list[UploadFile] | None, ONE_FILE] = None,
        file: Annotated[list[UploadFile] | None, ONE_FILE_ALIAS] = None,
    ) -> Response:
        """The patch as the model sees it (decoded, fitted to its size), as PNG: browsers cannot show TIFF."""
        up = await _read(_single(files, file), 0, model, settings)
        return Response(await run_in_threadpool(_png, up.image), media_type="image/png")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (several workers): MODEL and settings from the environment."""
    model = os.environ.get(MODEL_ENV)
    if not model:
        raise HistoscanInputError(f"${MODEL_ENV}: not set (the model to serve)")
    settings = ServeSettings(**json.loads(os.environ.get(SETTINGS_ENV, "{}")))
    return create_app(model, settings)


def settings_to_env(model_path: str | Path, settings: ServeSettings) -> dict[str, str]:
    """Environment that makes :func:`app_from_env` rebuild this app in a worker process (no API key in it)."""
    d = asdict(settings)
    d.pop("api_key")
    return {MODEL_ENV: str(model_path), SETTINGS_ENV: json.dumps(d)}


def _single(files: list[UploadFile] | None, alias: list[UploadFile] | None) -> UploadFile:
    """The one upload of /v1/explain or /v1/preview, sent as `files` or its alias `file`."""
    got = [*(files or ()), *(alias or ())]
    if len(got) != 1:
        raise UploadError(
            f"files: this endpoint takes exactly one image in the field `files` (or `file`), got {len(got)}",
            422,
            "invalid_request",
        )
    return got[0]


async def _read(file: UploadFile, index: int, model: ServedModel, settings: ServeSettings) -> Upload:
    data = await file.read()
    return await run_in_threadpool(
        read_upload, data, file.filename, index, model.image_size, model.fit, settings.max_pixels
    )


def _prediction(up: Upload, prob: float, model: ServedModel) -> dict[str, Any]:
    label = int(prob >= model.threshold)
    return {
        "id": up.id,
        "filename": up.filename,
        "probability": prob,
        "label": label,
        "class": "tumour" if label else "normal",
        "threshold": model.threshold,
        "model_version": model.version,
        "width": up.width,
        "height": up.height,
        "note": up.note,
        "fitted": up.fitted,
    }


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _bearer(api_key: str | None):
    scheme = HTTPBearer(
        auto_error=False,
        description="`Authorization: Bearer <key>` with the server's $HISTOSCAN_API_KEY (only when it is set)",
    )

    # a default, not Annotated[...]: the annotation is a string here and could not name the local `scheme`
    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if api_key is None:
            return
        token = credentials.credentials if credentials is not None else ""
        if credentials is None or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise StarletteHTTPException(
                401, "Authorization: missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


def _add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Every error is JSON {"error": code, "detail": message} with a 4xx status (5xx only for our bugs)."""

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), exc.status)

    @app.exception_handler(ExplainUnavailable)
    async def no_explain(request: Request, exc: ExplainUnavailable) -> JSONResponse:
        return JSONResponse(error_body("explain_unavailable", str(exc)), 501)

    @app.exception_handler(HistoscanInputError)
    async def input_error(request: Request, exc: HistoscanInputError) -> JSONResponse:
        return JSONResponse(error_body("invalid_input", str(exc)), 422)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return JSONResponse(
            error_body("overloaded", str(exc)), 503, headers={"Retry-After": str(settings.retry_after_s)}
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return JSONResponse(error_body("invalid_request", "; ".join(parts) or "invalid request"), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if isinstance(exc.__cause__, BodyTooLarge):  # the cap hit while FastAPI parsed the form
            mb = settings.max_upload_mb
            return JSONResponse(
                error_body(
                    "payload_too_large", f"request body: over the limit of {mb:g} MB (--max-upload-mb)"
                ),
                413,
                headers={"Connection": "close"},
            )
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's "error parsing the body"
            detail = f"{detail}: {type(exc.__cause__).__name__}: {exc.__cause__}"
        return JSONResponse(
            error_body(code.get(exc.status_code, "bad_request"), detail),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body("internal", f"{type(exc).__name__}: {exc}"), 500)
