"""ASGI middleware: request-body size cap (413 before parsing) and per-request metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from histoscan.serve.metrics import ServerMetrics

# endpoints named in metrics; anything else is counted as "other" so random paths cannot grow the label set
KNOWN_PATHS = (
    "/",
    "/healthz",
    "/metrics",
    "/v1/model",
    "/v1/predict",
    "/v1/explain",
    "/v1/preview",
    "/docs",
    "/openapi.json",
    "/docs/oauth2-redirect",
    "/redoc",
)


class BodyTooLarge(Exception):
    """The request body grew past the cap while it was being read."""


def error_body(error: str, detail: str) -> dict[str, str]:
    """The JSON shape of every error answer."""
    return {"error": error, "detail": detail}


def endpoint_label(path: str) -> str:
    """Bounded metrics label for a request path."""
    if path in KNOWN_PATHS:
        return path
    return "/static" if path.startswith("/static/") else "other"


class RequestGuard:
    """Refuses bodies over `max_body` bytes with 413 (by Content-Length at once, else while streaming) and
    records every request's endpoint, method, status and latency in `metrics`."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, max_body: int):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False, "received": 0}

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        async def receive_limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                await self._too_large(send_tracked, declared)
            else:
                await self.app(scope, receive_limited, send_tracked)
        except BodyTooLarge:
            if not state["started"]:
                await self._too_large(send_tracked, state["received"])
        finally:
            self.metrics.observe_request(
                endpoint_label(scope.get("path", "")),
                scope.get("method", ""),
                int(state["status"]),
                time.perf_counter() - t0,
            )

    async def _too_large(self, send: Send, size: int) -> None:
        mb = self.max_body / 1024 / 1024
        body = json.dumps(
            error_body(
                "payload_too_large",
                f"request body: {size} bytes or more, over the limit of {mb:g} MB (--max-upload-mb)",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None
