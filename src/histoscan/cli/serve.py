"""`histoscan serve MODEL`: the HTTP API and web page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from histoscan.errors import HistoscanInputError
from histoscan.serve.settings import ServeSettings  # stdlib only; the app (FastAPI) is imported by run()

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600  # the URL is announced only once the server answers; give up waiting after this
PROBE_TIMEOUT_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    d = ServeSettings()  # defaults live in ServeSettings only
    p = subparsers.add_parser(
        "serve",
        help="HTTP API + web page for a model",
        description="Serve MODEL over HTTP: POST /v1/predict, /v1/explain, GET /v1/model, /healthz, "
        "/metrics, API docs at /docs and /redoc (no internet needed) and a web page at /. Set "
        "HISTOSCAN_API_KEY to require `Authorization: Bearer <key>`. The URL is printed once the server "
        "answers.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, checkpoint (.ckpt) or ONNX export (.onnx)")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    p.add_argument("--workers", type=int, default=d.workers, help="server processes, each with its own model")
    p.add_argument(
        "--device", default=d.device, help="torch device: auto (CUDA when available), cpu, cuda:0 …"
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=d.max_upload_mb, help="request body cap in MB (413)"
    )
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest width x height of an image")
    p.add_argument("--max-files", type=int, default=d.max_files, help="images in one /v1/predict request")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="largest micro-batch (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a batch waits to fill")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="images waiting at most, then 503")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the options, load the model once (errors exit 2), then run uvicorn until interrupted.

    The "histoscan serve: ... on http://HOST:PORT/" line is printed once the server answers: with one worker
    when uvicorn has started (model warmed up, socket listening), with several when GET /healthz answers.
    """
    import uvicorn

    from histoscan.serve.app import create_app, settings_to_env

    for opt in ("port", "workers", "max_batch", "queue_size", "max_files", "max_pixels"):
        if getattr(args, opt) < (0 if opt == "port" else 1):
            raise HistoscanInputError(
                f"--{opt.replace('_', '-')}: must be positive (got {getattr(args, opt)})"
            )
    if args.max_upload_mb <= 0 or args.max_wait_ms < 0:
        raise HistoscanInputError("--max-upload-mb must be > 0 and --max-wait-ms >= 0")
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
