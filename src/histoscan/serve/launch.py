"""Run the HTTP server for a model: the cheap checks first (model path, port), then the model load, then
uvicorn with one or several workers; the URL is announced once the server answers."""

from __future__ import annotations

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
from histoscan.serve.settings import ServeSettings

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600  # the URL is announced only once the server answers; give up waiting after this
PROBE_TIMEOUT_S = 2.0


def serve(model: str | Path, settings: ServeSettings, announce: Callable[[str, int], None]) -> int:
    """Validate, load the model once (errors: HistoscanInputError), then run uvicorn until interrupted.

    `announce(version, port)` is called once the server answers: with one worker when uvicorn has started
    (model warmed up, socket listening), with several when GET /healthz answers. Returns the exit code.
    """
    import uvicorn

    from histoscan.serve import app as app_module  # looked up at call time (tests replace create_app)

    host = settings.host
    if not Path(model).exists():  # the cheap checks first, then the port, then the (slow) model load
        raise HistoscanInputError(f"{model}: no such run folder, checkpoint or .onnx file")
    if settings.port:  # a busy port is exit 2 now, not uvicorn's error once the model has loaded
        _check_port_free(host, settings.port)
    if not settings.port and settings.workers > 1:  # workers share one port
        settings = ServeSettings(**{**settings.to_dict(), "port": _free_port(host)})
    port = settings.port
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("HISTOSCAN_API_KEY"):
        log.warning("serving on %s without HISTOSCAN_API_KEY: anyone who can reach it can use it", host)
    app = app_module.create_app(model, settings)  # loads the model here: a bad MODEL is exit 2, not a crash
    version = app.state.model.version

    def ready(bound_port: int) -> None:
        announce(version, bound_port)

    stop = threading.Event()
    if settings.workers == 1:
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
        waiter = threading.Thread(target=_when_started, args=(server, ready, stop), daemon=True)
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
    os.environ.update(app_module.settings_to_env(model, settings))
    probe = threading.Thread(target=_when_answering, args=(_probe_host(host), port, ready, stop), daemon=True)
    probe.start()
    try:
        uvicorn.run(
            "histoscan.serve.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=settings.workers,
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
