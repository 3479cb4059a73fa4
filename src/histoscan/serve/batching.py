"""Micro-batching: concurrent requests' images are gathered into one model call on a worker thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The batcher's queue cannot take the request now; the client should retry later (HTTP 503)."""

    def __init__(self, pending: int, capacity: int):
        super().__init__(f"inference queue full ({pending}/{capacity} images waiting); retry shortly")
        self.pending = pending
        self.capacity = capacity


@dataclass
class _Item:
    image: np.ndarray  # S x S x 3 uint8
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters for /metrics: batches run, images inferred, and the largest batch seen."""

    batches: int = 0
    images: int = 0
    max_batch_seen: int = 0


class MicroBatcher:
    """Gathers single images from concurrent requests into batches of at most `max_batch`.

    The first waiting image opens a batch; the batch closes when it is full or `max_wait_ms` has passed since
    it opened. `fn` (uint8 N x S x S x 3 -> N outputs) runs on a dedicated worker thread so the event loop
    keeps serving. The queue holds at most `queue_size` images; :meth:`submit` raises :class:`QueueFullError`
    at once (never blocks) when a request does not fit, so the server can answer 503 with Retry-After.

    Args:
        fn: the model call, e.g. ``Predictor.predict_logits``.
        max_batch: largest batch handed to `fn` (1 disables batching).
        max_wait_ms: longest time the first image of a batch waits for company.
        queue_size: images that may wait at most.
        observer: called with (batch size, seconds of inference) after each batch (metrics).
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 64,
        max_wait_ms: float = 10.0,
        queue_size: int = 256,
        observer: Callable[[int, float], None] | None = None,
    ):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.stats = BatchStats()
        self.observer = observer
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        # one thread: the model runs one batch at a time (its own intra-op threads use the cores)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histoscan-infer")

    @property
    def pending(self) -> int:
        """Images waiting in the queue (not counting the batch being inferred)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Start the batching task on the running event loop."""
        if self._task is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self._task = asyncio.create_task(self._run(), name="histoscan-batcher")

    async def stop(self) -> None:
        """Stop the batching task; images still waiting are failed with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Queue N images (uint8 N x S x S x 3) and wait for their N outputs, in order.

        Raises:
            QueueFullError: the queue has no room for all N images (nothing is queued then).
        """
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        n = len(images)
        if n == 0:
            return np.zeros(0, np.float32)
        free = self._queue.maxsize - self._queue.qsize()
        if n > free:  # all or nothing: a request is never half-queued (single-threaded loop, so no race here)
            raise QueueFullError(self._queue.qsize(), self._queue.maxsize)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(n)]
        for img, fut in zip(images, futures, strict=True):
            self._queue.put_nowait(_Item(img, fut))
        try:
            return np.asarray(await asyncio.gather(*futures))
        except asyncio.CancelledError:  # client went away: its images are skipped when their batch is built
            for fut in futures:
                fut.cancel()
            raise

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:  # take what is already waiting without yielding to the timer
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [it for it in batch if not it.future.done()]  # drop images whose request was cancelled

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            images = np.stack([it.image for it in batch])
            t0 = loop.time()
            try:
                out = await loop.run_in_executor(self._executor, self.fn, images)
            except asyncio.CancelledError:  # stopping: nobody must wait for this batch forever
                for it in batch:
                    it.future.cancel()
                raise
            except Exception as e:  # a failing batch fails its requests, never the batcher
                log.exception("inference failed for a batch of %d", len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
            if self.observer is not None:
                self.observer(len(batch), loop.time() - t0)
            for it, value in zip(batch, out, strict=True):
                if not it.future.done():
                    it.future.set_result(value)
