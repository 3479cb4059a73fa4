"""How a cohort's slides are mapped: one slide (`map_one`), in-process (`LocalEngine`) or on Ray actors."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from histoscan.errors import HistoscanInputError
from histoscan.folders import SlideDir
from histoscan.inference.predictor import Predictor, load_predictor
from histoscan.slide import mapping
from histoscan.slide.cohort_items import CohortItem, model_id
from histoscan.slide.io import open_slide
from histoscan.slide.tiles import SlideOptions

log = logging.getLogger(__name__)

RAY_HINT = "pip install 'histoscan[cluster]'"


@dataclass
class SlideResult:
    """What mapping one slide gives back to the driver (never pixels: the outputs, or one-line error)."""

    id: str
    status: str  # "ok" | "failed"
    seconds: float
    error: str = ""  # one line
    detail: str = ""  # traceback of an unexpected error (kept in the failure record, not printed)
    summary: dict | None = None  # summary.json
    folder: str | None = None  # local engine: the finished output folder
    files: dict[str, bytes] | None = None  # Ray engine: the outputs, relative path -> content
    worker: dict = field(default_factory=dict)  # engine, host, pid, peak_rss_mb
    attempts: int = 1


def one_line(e: BaseException) -> str:
    """An exception as one line: the message of a HistoscanInputError, else `Type: first line`."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not isinstance(e, HistoscanInputError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (current RSS where the peak is not available)."""
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except ImportError:  # Windows
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)


def worker_info(engine: str) -> dict[str, Any]:
    """Who mapped a slide: engine, host, pid and peak RSS so far."""
    return {"engine": engine, "host": socket.gethostname(), "pid": os.getpid(), "peak_rss_mb": peak_rss_mb()}


def map_one(
    predictor: Predictor, item: CohortItem, options: SlideOptions, stage: Path, progress: bool = False
) -> SlideResult:
    """Map one slide with `map_slide` into `stage/<id>/` (plus a 512 px thumbnail.jpg); errors become a result.

    Args:
        predictor: the model.
        item: the slide (its CSV µm/px overrides `options.mpp`).
        options: how slides are mapped.
        stage: a private working folder; the slide's folder appears in it only complete.
        progress: a tqdm bar on stderr.
    """
    t0 = time.perf_counter()
    dest = stage / item.id
    opts = replace(options, mpp=item.mpp if item.mpp is not None else options.mpp, force=True)
    try:
        summary = mapping.map_slide(predictor, item.path, dest, opts, progress=progress, truth=item.truth)
        reader = open_slide(item.path, opts.mpp, opts.reader)
        try:
            from PIL import Image

            Image.fromarray(reader.thumbnail(512)).save(SlideDir(dest).thumbnail, quality=85)
        finally:
            reader.close()
    except Exception as e:  # any one slide's failure is recorded; the cohort goes on
        shutil.rmtree(dest, ignore_errors=True)
        detail = "" if isinstance(e, HistoscanInputError) else traceback.format_exc()
        return SlideResult(item.id, "failed", time.perf_counter() - t0, one_line(e), detail)
    return SlideResult(item.id, "ok", time.perf_counter() - t0, summary=summary, folder=str(dest))


OnResult = Callable[[SlideResult], None]


class LocalEngine:
    """Sequential, in this process, with one predictor."""

    name = "local"

    def __init__(self, predictor: Predictor, options: SlideOptions, progress: bool = False) -> None:
        self.predictor, self.options, self.progress = predictor, options, progress
        self.workers, self.restarts = 1, 0

    def run(self, items: list[CohortItem], stage: Path, on_result: OnResult) -> None:
        """Map `items` one by one, handing each result to `on_result` as soon as it is ready."""
        for item in items:
            result = map_one(self.predictor, item, self.options, stage, self.progress)
            result.worker = worker_info(self.name)
            on_result(result)


class CohortWorker:
    """A Ray actor (wrapped by `ray.remote` at run time): loads the model once, maps slides, returns outputs."""

    def __init__(self, model: str, backend: str, device: str, options: SlideOptions, threads: int) -> None:
        self.options, self.error, self.model_id = options, "", ""
        try:
            import torch

            torch.set_num_threads(max(1, threads))
            self.predictor = load_predictor(model, backend, device)  # type: ignore[arg-type]
            self.model_id = model_id(self.predictor.card)
        except Exception as e:  # reported by info(), so the driver can say it in one line
            self.error = one_line(e)

    def info(self) -> dict[str, Any]:
        """Model id (or the load error) and where this worker runs."""
        return {"model_id": self.model_id, "error": self.error, **worker_info("ray")}

    def map(self, item: CohortItem) -> SlideResult:
        """Map one slide in a private temporary folder and return its output files as bytes."""
        if self.error:
            raise RuntimeError(f"this worker could not load the model: {self.error}")
        stage = Path(tempfile.mkdtemp(prefix="histoscan-cohort-"))
        try:
            result = map_one(self.predictor, item, self.options, stage)
            if result.folder is not None:
                root = Path(result.folder)
                result.files = {
                    p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
                }
                result.folder = None
            result.worker = worker_info("ray")
            return result
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT Ray address must accept a TCP connection (ray.init would retry it for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", "ray://...", "local": Ray itself fails fast or knows better
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise HistoscanInputError(
            f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the cluster with "
            "`ray start --head` or give its address"
        ) from None


def import_ray() -> Any:
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise HistoscanInputError(f"--engine ray: Ray is not installed; {RAY_HINT}") from None
    return ray


class RayEngine:
    """Slides spread over Ray actors, each loading the model once; a dead actor's slide goes to a new actor.

    Args:
        model: MODEL as given (a path every node sees).
        backend, device: as for `load_predictor`, in each worker.
        options: how slides are mapped.
        expect_model_id: the driver's model id; a worker seeing other weights is an error.
        workers: actors (None: the cluster's CPUs // cpus_per_worker).
        cpus_per_worker, gpus_per_worker: each actor's Ray resources (torch threads = CPUs).
        address: an existing cluster ("auto", "ray://host:10001", ...); None starts a local Ray (stopped at
            the end). A Ray already initialised in this process is used as it is.
        max_attempts: tries per slide when workers die under it; then it is recorded as failed.
    """

    name = "ray"

    def __init__(
        self,
        model: str | Path,
        backend: str,
        device: str,
        options: SlideOptions,
        expect_model_id: str,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        address: str | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.model, self.backend, self.device, self.options = str(model), backend, device, options
        self.expect_model_id, self.address, self.max_attempts = expect_model_id, address, max_attempts
        self.want, self.cpus, self.gpus = workers, cpus_per_worker, gpus_per_worker
        self.workers, self.restarts = 0, 0
        self.ray = import_ray()

    def run(self, items: list[CohortItem], stage: Path, on_result: OnResult) -> None:
        """Map `items` on actors, handing each result to `on_result` (on the driver) as it arrives."""
        ray = self.ray
        if not items:  # everything done already: no cluster needed
            return
        started = self._connect(len(items))
        actors: list[Any] = []
        try:
            cls = ray.remote(CohortWorker).options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0)
            args = (self.model, self.backend, self.device, self.options, max(1, int(self.cpus)))
            actors = [cls.remote(*args) for _ in range(self.workers)]
            for info in ray.get([a.info.remote() for a in actors]):
                self._check(info)
            self._dispatch(items, actors, lambda: cls.remote(*args), on_result)
        finally:
            for a in actors:
                with contextlib.suppress(Exception):  # already dead, or the cluster is gone
                    ray.kill(a)
            if started:
                ray.shutdown()

    def _connect(self, n_items: int) -> bool:
        """Join or start Ray and size the pool; True when this call started the connection."""
        ray = self.ray
        started = not ray.is_initialized()
        cpu = os.cpu_count() or 1
        if started and self.address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            n = self.want or max(1, int(cpu // max(self.cpus, 1e-9)))
            ray.init(
                address="local",  # a new local Ray, whatever RAY_ADDRESS or an earlier `ray start` say
                num_cpus=max(cpu, int(n * self.cpus + 0.999)),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        elif started:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise HistoscanInputError(
                    f"--ray-address {self.address}: cannot join ({one_line(e)})"
                ) from None
        total = ray.cluster_resources()
        n = self.want or max(1, int(total.get("CPU", 1) // max(self.cpus, 1e-9)))
        self.workers = max(1, min(n, n_items))
        short = [
            f"{self.workers} x {per:g} {res} but the cluster has {total.get(res, 0):g}"
            for res, per in (("CPU", self.cpus), ("GPU", self.gpus))
            if per and self.workers * per > total.get(res, 0)
        ]
        if short:
            if started and self.address is None:
                ray.shutdown()
                raise HistoscanInputError(f"--workers/--gpus-per-worker: {'; '.join(short)}")
            log.warning("Ray: %s; workers wait until the cluster has room", "; ".join(short))
        return started

    def _check(self, info: dict) -> None:
        if info["error"]:
            raise HistoscanInputError(f"Ray worker on {info['host']}: {info['error']}")
        if info["model_id"] != self.expect_model_id:
            raise HistoscanInputError(
                f"{self.model}: the Ray worker on {info['host']} loads other weights ({info['model_id']}, "
                f"here {self.expect_model_id}); MODEL must be the same file on every node"
            )

    def _dispatch(
        self, items: list[CohortItem], actors: list[Any], new_actor: Callable[[], Any], on_result: OnResult
    ) -> None:
        """One slide per idle actor; `ray.wait` for any; a slide whose actor died goes back to the queue."""
        ray = self.ray
        from ray.exceptions import RayActorError, RayError

        queue = deque(items)
        attempts = {it.id: 0 for it in items}
        idle = list(actors)
        running: dict[Any, tuple[Any, CohortItem]] = {}
        while queue or running:
            while idle and queue:
                actor, item = idle.pop(), queue.popleft()
                attempts[item.id] += 1
                running[actor.map.remote(item)] = (actor, item)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                actor, item = running.pop(ref)
                t0 = time.perf_counter()
                try:
                    result = ray.get(ref)
                except RayActorError as e:  # the worker died (killed, OOM, node lost) under this slide
                    self.restarts += 1
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    actors.remove(actor)
                    replacement = new_actor()
                    actors.append(replacement)
                    idle.append(replacement)
                    if attempts[item.id] < self.max_attempts:
                        log.warning("worker died mapping %s; resubmitted (%s)", item.id, one_line(e))
                        queue.appendleft(item)
                        continue
                    error = f"a worker died mapping this slide {attempts[item.id]} times ({one_line(e)})"
                    result = SlideResult(item.id, "failed", time.perf_counter() - t0, error)
                except RayError as e:  # the task itself failed outside map_one's own error handling
                    result = SlideResult(item.id, "failed", time.perf_counter() - t0, one_line(e), str(e))
                    idle.append(actor)
                else:
                    idle.append(actor)
                result.attempts = attempts[item.id]
                on_result(result)
