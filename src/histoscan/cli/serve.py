"""`histoscan serve MODEL`: the HTTP API and web page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import errno
import http.client
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histoscan.errors import HistoscanInputError
from histoscan.ranges import field_option
from histoscan.serve.settings import ServeSettings  # stdlib only; the app (FastAPI) is imported by run()

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600  # the URL is announced only once the server answers; give up waiting after this
PROBE_TIMEOUT_S = 2.0


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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    d = ServeSettings()  # defaults and ranges live in ServeSettings only
    p = subparsers.add_parser(
        "serve",
        help="HTTP API + web page for a model",
        description=f"Serve MODEL over HTTP: {_endpoints_text()}. Set HISTOSCAN_API_KEY to require "
        "`Authorization: Bearer <key>`. The URL is printed once the server answers.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, checkpoint (.ckpt) or ONNX export (.onnx)")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    p.add_argument(
        "--port", **field_option(ServeSettings, "port"), help=f"port (default {d.port}; 0: any free one)"
    )
    p.add_argument(
        "--workers",
        **field_option(ServeSettings, "workers"),
        help="server processes, each with its own model",
    )
    p.add_argument(
        "--device", default=d.device, help="torch device: auto (CUDA when available), cpu, cuda:0 …"
    )
    p.add_argument(
        "--max-upload-mb", **field_option(ServeSettings, "max_upload_mb"), help="request body cap in MB (413)"
    )
    p.add_argument(
        "--max-pixels", **field_option(ServeSettings, "max_pixels"), help="largest width x height of an image"
    )
    p.add_argument(
        "--max-files", **field_option(ServeSettings, "max_files"), help="images in one /v1/predict request"
    )
    p.add_argument(
        "--max-batch", **field_option(ServeSettings, "max_batch"), help="largest micro-batch (1: no batching)"
    )
    p.add_argument(
        "--max-wait-ms", **field_option(ServeSettings, "max_wait_ms"), help="how long a batch waits to fill"
    )
    p.add_argument(
        "--queue-size", **field_option(ServeSettings, "queue_size"), help="images waiting at most, then 503"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the options, load the model once (errors exit 2), then run uvicorn until interrupted.

    The "histoscan serve: ... on http://HOST:PORT/" line is printed once the server answers: with one worker
    when uvicorn has started (model warmed up, socket listening), with several when GET /healthz answers.
    """
    import uvicorn

    from histoscan.serve.app import create_app, settings_to_env

    if not Path(args.model).exists():  # the cheap checks first, then the port, then the (slow) model load
        raise HistoscanInputError(f"{args.model}: no such run folder, checkpoint or .onnx file")
    if args.port:  # a busy port is exit 2 now, not uvicorn's error once the model has loaded
        _check_port_free(args.host, args.port)
    port = args.port if args.port or args.workers == 1 else _free_port(args.host)  # workers share one port
    settings = ServeSettings(
        host=args.host,
        port=port,
        workers=args.workers,
        device=args.device,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_files=args.max_files,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("HISTOSCAN_API_KEY"):
        log.warning("serving on %s without HISTOSCAN_API_KEY: anyone who can reach it can use it", args.host)
    app = create_app(args.model, settings)  # loads the model here: a bad MODEL is exit 2, not a worker crash
    version = app.state.model.version

    def announce(bound_port: int) -> None:
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"histoscan serve: {version} on http://{host}:{bound_port}/ "
            f"(API docs /docs, batch {args.max_batch}, {args.workers} worker(s))",
            flush=True,
        )

    stop = threading.Event()
    if args.workers == 1:
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level="info"))
        waiter = threading.Thread(target=_when_started, args=(server, announce, stop), daemon=True)
        waiter.start()
        try:
            server.run()
        except KeyboardInterrupt:  # as uvicorn.run: Ctrl-C after a graceful shutdown is a normal end
            pass
        finally:
            stop.set()
        return 0 if server.started else 1
    # several processes need an import string: each worker rebuilds the app from the environment
    del app  # the parent only checked that MODEL loads; the workers hold the models
    os.environ.update(settings_to_env(args.model, settings))
    probe = threading.Thread(
        target=_when_answering, args=(_probe_host(args.host), port, announce, stop), daemon=True
    )
    probe.start()
    try:
        uvicorn.run(
            "histoscan.serve.app:app_from_env",
            factory=True,
            host=args.host,
            port=port,
            workers=args.workers,
            log_level="info",
        )
    finally:
        stop.set()
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Raise HistoscanInputError naming --port (or --host) unless HOST:PORT can be bound now, as uvicorn will."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise HistoscanInputError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise HistoscanInputError(f"--port {port}: {host}:{port} is already in use") from None
            raise HistoscanInputError(f"--host {host} --port {port}: cannot bind ({e.strerror})") from None


def _free_port(host: str) -> int:
    """A port free on HOST now (for --port 0 with several workers, which must all bind the same one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _probe_host(host: str) -> str:
    """Where to reach a server bound to HOST from this machine (a wildcard address means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _when_started(server: Any, announce: Callable[[int], None], stop: threading.Event) -> None:
    """Call announce(port) once uvicorn's `server.started` (lifespan done, sockets listening)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if stop.wait(0.05) or time.monotonic() > deadline:
            return
    ports = [s.getsockname()[1] for srv in getattr(server, "servers", []) for s in (srv.sockets or [])]
    announce(ports[0] if ports else server.config.port)


def _when_answering(host: str, port: int, announce: Callable[[int], None], stop: threading.Event) -> None:
    """Call announce(port) once GET http://HOST:PORT/healthz answers 200 (polled, bounded)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, port, timeout=PROBE_TIMEOUT_S)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                announce(port)
                return
        except (OSError, http.client.HTTPException):  # refused (no worker yet), reset, timed out: again
            pass
        finally:
            conn.close()
        stop.wait(0.1)
    if not stop.is_set():
        log.warning("no answer from http://%s:%d/healthz after %d s", host, port, STARTUP_TIMEOUT_S)
