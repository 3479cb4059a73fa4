"""`histoscan serve` in a subprocess: the URL line is printed only once the server answers on it."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

ANNOUNCE = re.compile(
    r"^histoscan serve: (\S+) on http://127\.0\.0\.1:(\d+)/ \(API docs /docs, .* (\d+) worker\(s\)\)$"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(stream) -> queue.Queue[str | None]:
    """Lines of `stream` as a thread reads them (None at its end)."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text()[-3000:]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_url_is_announced_only_when_the_server_answers(
    tmp_path: Path, make_run: Callable[..., Path], workers: int
) -> None:
    run = make_run(tmp_path / "run")
    port = 0 if workers == 1 else free_port()  # one worker: any free port, the line names the bound one
    env = {k: v for k, v in os.environ.items() if k != "HISTOSCAN_API_KEY"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = (tmp_path / "stderr.txt").open("w")
    cmd = [str(Path(sys.executable).with_name("histoscan")), "serve", str(run), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--device", "cpu"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True
    )
    try:
        lines, seen, m = _lines(proc.stdout), [], None
        deadline = time.monotonic() + 240
        while m is None:  # stdout also carries uvicorn's access log (the probe's GET /healthz)
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no announce line in 240 s: {seen}; stderr:\n{_tail(tmp_path)}")
            assert line is not None, f"exited {proc.poll()}: {seen}; stderr:\n{_tail(tmp_path)}"
            seen.append(line)
            m = ANNOUNCE.match(line)
        # at once, no retry: the announced URL must already answer
        r = httpx.get(f"http://127.0.0.1:{m[2]}/healthz", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert r.json()["model"] == m[1] and int(m[3]) == workers
        assert int(m[2]) == port or (port == 0 and int(m[2]) > 0)
        assert proc.poll() is None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
        log.close()


def test_busy_port_is_one_line_before_the_model_loads(tiny_run: Path, capsys, monkeypatch) -> None:
    """A port in use is exit 2 naming --port at once, not uvicorn's error after the model has loaded."""
    import histoscan.serve.app as app_module
    from histoscan.cli import main

    def no_load(*args, **kwargs):  # pragma: no cover - reached only when the check is missing
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(app_module, "create_app", no_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", str(tiny_run), "--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"histoscan serve: error: --port {port}: 127.0.0.1:{port} is already in use\n"


def test_help_lists_every_endpoint_of_the_app(tiny_run: Path) -> None:
    """`serve --help` names each route of the API (method and path), and only those."""
    from histoscan.cli import build_parser, iter_commands
    from histoscan.cli.serve import ENDPOINTS, PAGES
    from histoscan.serve import ServeSettings, create_app

    app = create_app(tiny_run, ServeSettings(device="cpu"))
    routes = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    assert routes == {(method, path) for method, path, _ in ENDPOINTS}
    served = {getattr(r, "path", None) for r in app.routes}
    assert set(PAGES) <= served
    text = " ".join(dict(iter_commands(build_parser()))["serve"].format_help().split())
    for method, path, _ in ENDPOINTS:
        assert f"{method} {path} " in text, (method, path)
    for path in PAGES:
        assert path in text
