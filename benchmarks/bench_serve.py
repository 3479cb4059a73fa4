"""Load benchmark of `histoscan serve` (loopback): throughput, p50/p99 latency, errors, RSS; batched vs not.

Usage: python benchmarks/bench_serve.py [--model resnet50] [--backend onnx|torch] [--clients 16]
                                        [--duration 20] [--max-requests 200000] [--json OUT]
An untrained model (96 px) is written to a temporary run folder and, for --backend onnx, exported with
`histoscan export`'s code (falls back to the torch backend, and says so, when the export fails). The server
runs as `histoscan serve` in a child process on 127.0.0.1 and is stopped at the end; each phase stops itself
after --duration seconds or --max-requests requests. Phases: micro-batching (--max-batch 64) and unbatched
(--max-batch 1), same clients, same real Kaggle HCD patches (one image per request, as a web page sends them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from _common import shared_data

from histoscan.config import TrainConfig
from histoscan.folders import RunDir
from histoscan.models import create_model
from histoscan.models.classifier import PatchClassifier


def make_run(root: Path, model: str, size: int = 96) -> Path:
    """A run folder holding an untrained `model` (random weights are enough to measure speed)."""
    root.mkdir(parents=True)
    cfg = TrainConfig(model=model, image_size=size, mpp=0.972)
    run = RunDir(root)
    run.write_config(cfg)
    net = PatchClassifier(create_model(model)).eval()
    run.checkpoints.mkdir()
    torch.save(
        {
            "hyper_parameters": {"config": cfg.to_dict(), "image_size": size, "mpp": 0.972},
            "state_dict": {"classifier." + k: v for k, v in net.state_dict().items()},
        },
        run.best_ckpt,
    )
    run.write_threshold({"threshold": 0.5})
    return root


def served_model(tmp: Path, model: str, backend: str) -> tuple[Path, str]:
    """(MODEL path, backend actually used)."""
    run = make_run(tmp / f"{model}-run", model)
    if backend == "torch":
        return run, "torch"
    try:
        from histoscan.export.onnx import export_onnx

        return export_onnx(run, tmp / f"{model}.onnx"), "onnxruntime"
    except Exception as e:  # the benchmark still measures serving; the report says which backend ran
        print(
            f"ONNX export failed ({type(e).__name__}: {e}); falling back to the torch backend",
            file=sys.stderr,
        )
        return run, "torch (ONNX export failed)"


def patches() -> list[tuple[str, bytes]]:
    """Real 96x96 Kaggle HCD TIFF patches (random PNGs when the shared data is absent)."""
    files = sorted((shared_data() / "kaggle-hcd-test").glob("*.tif"))
    if files:
        return [(f.name, f.read_bytes()) for f in files]
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append((f"random{i}.png", buf.getvalue()))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int, max_wait_ms: float) -> subprocess.Popen:
    """`histoscan serve` in a child process; returns once /healthz answers."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from histoscan.cli import main; sys.exit(main())",
        "serve",
        str(model),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(max_wait_ms),
        "--queue-size",
        "1024",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HISTOSCAN_API_KEY"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /healthz within 180 s")


async def load(
    url: str, images: list[tuple[str, bytes]], clients: int, duration: float, max_requests: int
) -> dict:
    """`clients` concurrent loops posting one image each to /v1/predict until time or count runs out."""
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + duration

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < stop_at and len(latencies) + len(errors) < max_requests:
            name, data = images[i % len(images)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url, files=[("files", (name, data, "image/tiff"))])
                ok = r.status_code == 200
                detail = f"{r.status_code} {r.text[:120]}"
            except httpx.HTTPError as e:
                ok, detail = False, f"{type(e).__name__}: {e}"
            (latencies.append(time.perf_counter() - t0) if ok else errors.append(detail))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
    }


def phase(model: Path, max_batch: int, args: argparse.Namespace, images: list[tuple[str, bytes]]) -> dict:
    """One server, warmed up, then loaded by the clients; RSS of the server before and after."""
    port = _free_port()
    proc = start_server(model, port, max_batch, args.max_wait_ms)
    try:
        base = f"http://127.0.0.1:{port}"
        for name, data in images[:4]:  # warm-up (first-call allocations), not measured
            httpx.post(f"{base}/v1/predict", files=[("files", (name, data, "image/tiff"))], timeout=60)
        server = psutil.Process(proc.pid)
        rss_before = server.memory_info().rss / 2**20
        res = asyncio.run(load(f"{base}/v1/predict", images, args.clients, args.duration, args.max_requests))
        res["rss_before_mb"], res["rss_after_mb"] = rss_before, server.memory_info().rss / 2**20
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        for line in metrics.splitlines():  # mean batch size from the server's own histogram
            if line.startswith("histoscan_batch_size_sum"):
                total = float(line.split()[-1])
            if line.startswith("histoscan_batch_size_count"):
                res["mean_batch"] = total / max(1.0, float(line.split()[-1]))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"max_batch": max_batch, **res}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per phase")
    ap.add_argument("--max-requests", type=int, default=200_000, help="requests per phase at most")
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=64, help="--max-batch of the batched phase")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    images = patches()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        model, backend = served_model(Path(tmp), args.model, args.backend)
        runs = [phase(model, args.batch, args, images), phase(model, 1, args, images)]
    cpu = f"{psutil.cpu_count()} CPUs" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    )
    result = {
        "model": args.model,
        "backend": backend,
        "clients": args.clients,
        "duration_s": args.duration,
        "machine": cpu,
        "phases": runs,
        "batching_speedup": runs[0]["throughput_rps"] / max(runs[1]["throughput_rps"], 1e-9),
    }
    print(f"{args.model} via {backend}, {args.clients} clients x {args.duration:g} s, {cpu}")
    print(
        f"{'max-batch':>9} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'mean batch':>10} {'RSS MB before/after':>20}"
    )
    for r in runs:
        print(
            f"{r['max_batch']:>9} {r['requests']:>8} {r['errors']:>6} {r['throughput_rps']:>8.1f} "
            f"{r['p50_ms'] or 0:>8.1f} {r['p99_ms'] or 0:>8.1f} {r.get('mean_batch', 0):>10.1f} "
            f"{r['rss_before_mb']:>9.0f}/{r['rss_after_mb']:.0f}"
        )
    print(f"micro-batching speed-up: {result['batching_speedup']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(r["errors"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
