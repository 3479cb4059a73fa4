"""`histoscan serve MODEL`: the HTTP API and web page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
from typing import Any

from histoscan.arguments import add_field, add_options, build
from histoscan.cli.parsing import add_command
from histoscan.options.model import ModelOptions
from histoscan.serve.settings import ServeSettings  # stdlib only; the app (FastAPI) is imported by run()

# every endpoint of the API (histoscan.serve.app), for `serve --help`; tests/serve/test_cli_serve.py checks it
# against the app's routes
ENDPOINTS = (
    ("POST", "/v1/predict", "probabilities"),
    ("POST", "/v1/explain", "Grad-CAM"),
    ("POST", "/v1/preview", "the patch as the model sees it"),
    ("GET", "/v1/model", "model card and limits"),
    ("GET", "/healthz", "liveness"),
    ("GET", "/metrics", "Prometheus"),
)
PAGES = ("/docs", "/redoc", "/")  # API docs (no internet needed) and the web page


def _endpoints_text() -> str:
    listed = ", ".join(f"{method} {path} ({what})" for method, path, what in ENDPOINTS)
    return f"{listed}; API docs at {PAGES[0]} and {PAGES[1]} and a web page at {PAGES[2]}"


def register(subparsers: Any) -> None:
    """Add the `serve` subcommand: MODEL and :class:`ServeSettings` (its --device is every command's)."""
    p = add_command(
        subparsers,
        "serve",
        run,
        help="HTTP API + web page for a model",
        description=f"Serve MODEL over HTTP: {_endpoints_text()}. Set HISTOSCAN_API_KEY to require "
        "`Authorization: Bearer <key>`. The URL is printed once the server answers.",
    )
    add_field(p, ModelOptions.__dataclass_fields__["model"])
    add_options(p, ServeSettings)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; print the URL once the server answers (see :func:`histoscan.serve.launch.serve`)."""
    from histoscan.serve.launch import serve

    settings = build(ServeSettings, args)

    def announce(version: str, port: int) -> None:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(
            f"histoscan serve: {version} on http://{host}:{port}/ "
            f"(API docs /docs, batch {settings.max_batch}, {settings.workers} worker(s))",
            flush=True,
        )

    return serve(args.model, settings, announce)
