"""Prometheus text-format metrics for the server: requests, errors, latency and batch-size histograms."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Hand-rolled rather than prometheus_client: the server exposes four metric families, the text format
# (https://prometheus.io/docs/instrumenting/exposition_formats/) is a few lines, and a per-app registry keeps
# several apps in one process (tests) independent without another dependency.

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v


class ServerMetrics:
    """Thread-safe counters and histograms rendered in the Prometheus text exposition format."""

    def __init__(self, prefix: str = "histoscan"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str], _Histogram] = {}
        self._batches = _Histogram(BATCH_BUCKETS)
        self._infer = _Histogram(LATENCY_BUCKETS)
        self._images = 0

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency (errors are statuses >= 400, by class)."""
        with self._lock:
            self._requests[(endpoint, method, str(status))] += 1
            if status >= 400:
                self._errors[(endpoint, "client" if status < 500 else "server")] += 1
            hist = self._latency.setdefault((endpoint,), _Histogram(LATENCY_BUCKETS))
            hist.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model call of `size` images taking `seconds`."""
        with self._lock:
            self._batches.observe(size)
            self._infer.observe(seconds)
            self._images += size

    def requests(self, endpoint: str, status: int | None = None) -> int:
        """Requests counted for `endpoint` (optionally only those answered with `status`)."""
        with self._lock:
            return sum(
                n
                for (e, _, s), n in self._requests.items()
                if e == endpoint and (status is None or s == str(status))
            )

    def render(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """The exposition text; `gauges` maps name -> (help, value) for point-in-time values (queue depth)."""
        p = self.prefix
        out: list[str] = []
        with self._lock:
            out += [
                f"# HELP {p}_requests_total HTTP requests by endpoint, method and status.",
                f"# TYPE {p}_requests_total counter",
            ]
            for key, n in sorted(self._requests.items()):
                out.append(f"{p}_requests_total{_labels(('endpoint', 'method', 'status'), key)} {n}")
            out += [
                f"# HELP {p}_request_errors_total HTTP requests answered with 4xx (client) or 5xx (server).",
                f"# TYPE {p}_request_errors_total counter",
            ]
            for key, n in sorted(self._errors.items()):
                out.append(f"{p}_request_errors_total{_labels(('endpoint', 'kind'), key)} {n}")
            out += [
                f"# HELP {p}_request_duration_seconds Request latency by endpoint.",
                f"# TYPE {p}_request_duration_seconds histogram",
            ]
            for key, hist in sorted(self._latency.items()):
                out += self._render_hist(f"{p}_request_duration_seconds", ("endpoint",), key, hist)
            out += [
                f"# HELP {p}_batch_size Images per model call (micro-batching).",
                f"# TYPE {p}_batch_size histogram",
            ]
            out += self._render_hist(f"{p}_batch_size", (), (), self._batches)
            out += [
                f"# HELP {p}_inference_seconds Seconds per model call.",
                f"# TYPE {p}_inference_seconds histogram",
            ]
            out += self._render_hist(f"{p}_inference_seconds", (), (), self._infer)
            out += [
                f"# HELP {p}_images_total Images inferred.",
                f"# TYPE {p}_images_total counter",
                f"{p}_images_total {self._images}",
            ]
        for name, (help_, value) in sorted((gauges or {}).items()):
            out += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} gauge", f"{p}_{name} {_num(value)}"]
        return "\n".join(out) + "\n"

    @staticmethod
    def _render_hist(
        name: str, names: tuple[str, ...], values: tuple[str, ...], hist: _Histogram
    ) -> list[str]:
        lines, cum = [], 0
        for bound, n in zip((*hist.buckets, float("inf")), hist.counts, strict=True):
            cum += n
            le = "+Inf" if bound == float("inf") else _num(bound)
            le_label = f'le="{le}"'
            lines.append(f"{name}_bucket{_labels(names, values, le_label)} {cum}")
        lines.append(f"{name}_sum{_labels(names, values)} {_num(hist.sum)}")
        lines.append(f"{name}_count{_labels(names, values)} {cum}")
        return lines
