"""The JSON the API answers, as pydantic models: the OpenAPI document declares each route's real responses
(its 200 body and every error status with the app's own error shape, not FastAPI's HTTPValidationError)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model


class Prediction(BaseModel):
    """One uploaded patch's result."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="the file name's stem (image-<index> when the upload had no name)")
    filename: str
    probability: float = Field(description="P(tumour)")
    label: Literal[0, 1] = Field(description="1 when probability >= threshold")
    class_: Literal["tumour", "normal"] = Field(alias="class")
    threshold: float
    model_version: str
    width: int = Field(description="the uploaded image's width in pixels")
    height: int = Field(description="the uploaded image's height in pixels")
    note: str | None = Field(description='colour/depth conversion applied, e.g. "alpha" or "16-bit+grey"')
    fitted: str | None = Field(
        description='how the image was fitted to the model\'s input size, e.g. "padded 50x42 -> 96x96" '
        '("cropped", "resized" or "padded+cropped" likewise); null when it already had that size'
    )


class PredictResponse(BaseModel):
    """The answer of /v1/predict: one prediction per uploaded file, in upload order."""

    model: str
    model_version: str
    threshold: float
    predictions: list[Prediction]


class ExplainResponse(Prediction):
    """/v1/explain?format=json: the prediction plus PNG data URLs."""

    overlay: str = Field(description="data:image/png;base64 Grad-CAM overlay")
    figure: str = Field(description="data:image/png;base64 figure (patch | overlay)")
    image: str = Field(description="data:image/png;base64 patch as the model sees it (fitted)")


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]
    model: str = Field(description="model version")
    queue: int = Field(description="images waiting for inference")


class Limits(BaseModel):
    """The server's request limits."""

    max_upload_mb: float
    max_pixels: int
    max_files: int
    max_batch: int


class ModelInfo(BaseModel):
    """The served model and the server's limits."""

    name: str
    version: str
    backend: str
    device: str
    image_size: int
    mpp: float | None
    threshold: float
    threshold_source: str
    fit: Literal["pad", "resize"]
    normalisation: str
    stain: str
    explain: bool = Field(description="whether /v1/explain works (PyTorch model)")
    source: str
    histoscan: str
    limits: Limits


def _error(name: str, codes: tuple[str, ...], doc: str) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "error": (Literal[codes], Field(description="machine-readable code")),  # type: ignore[valid-type]
        "detail": (str, Field(description="one line for people, naming the file or field")),
    }
    return create_model(name, __doc__=doc, **fields)


# every error answer is {"error": code, "detail": message}; the codes each status carries
ERROR_CODES: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: (
        "BadRequestError",
        "the request body could not be parsed (e.g. broken multipart)",
        ("bad_request",),
    ),
    401: ("UnauthorizedError", "missing or wrong `Authorization: Bearer <key>`", ("unauthorized",)),
    413: (
        "PayloadTooLargeError",
        "request body over --max-upload-mb, more files than --max-files, or an image over --max-pixels",
        ("payload_too_large", "too_many_files", "image_too_large"),
    ),
    415: ("UnsupportedMediaTypeError", "a file that is not PNG, TIFF or JPEG", ("unsupported_media_type",)),
    422: (
        "InvalidRequestError",
        "a missing or extra field, a bad query value, or an empty, corrupt or truncated image",
        ("invalid_request", "invalid_image", "empty_file", "invalid_input"),
    ),
    500: ("InternalError", "a bug in the server (never the request's fault)", ("internal",)),
    501: (
        "ExplainUnavailableError",
        "Grad-CAM needs the PyTorch model; this server runs an ONNX export",
        ("explain_unavailable",),
    ),
    503: ("OverloadedError", "the inference queue is full; retry after Retry-After seconds", ("overloaded",)),
}
ERROR_MODELS = {status: _error(name, codes, doc) for status, (name, doc, codes) in ERROR_CODES.items()}
_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, each with its model (and headers)."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        entry: dict[str, Any] = {"model": ERROR_MODELS[s], "description": ERROR_CODES[s][1]}
        if s in _HEADERS:
            entry["headers"] = _HEADERS[s]
        out[s] = entry
    return out
