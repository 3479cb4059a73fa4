"""MicroBatcher: concurrent submits share model calls, batches are bounded, a full queue refuses at once."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from histoscan.serve.batching import MicroBatcher, QueueFullError


def _images(n: int, start: int = 0) -> np.ndarray:
    """n 4x4 images whose first pixel encodes their index, so outputs can be traced back."""
    x = np.zeros((n, 4, 4, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(start, start + n)
    return x


class _Model:
    def __init__(self, delay: float = 0.0):
        self.calls: list[int] = []
        self.delay = delay

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        time.sleep(self.delay)
        return x[:, 0, 0, 0].astype(np.float32) * 2


async def _run(batcher: MicroBatcher, coro_factory):
    await batcher.start()
    try:
        return await coro_factory()
    finally:
        await batcher.stop()


def test_concurrent_requests_are_batched_and_answered_in_order() -> None:
    model = _Model()
    b = MicroBatcher(model, max_batch=64, max_wait_ms=200, queue_size=256)

    async def go():
        return await asyncio.gather(*(b.submit(_images(1, i)) for i in range(20)), b.submit(_images(5, 100)))

    outs = asyncio.run(_run(b, go))
    assert [float(o[0]) for o in outs[:20]] == [2.0 * i for i in range(20)]
    assert outs[20].tolist() == [200.0, 202.0, 204.0, 206.0, 208.0]
    assert model.calls == [25] and b.stats.max_batch_seen == 25 and b.stats.images == 25


def test_batches_never_exceed_max_batch() -> None:
    model = _Model(delay=0.01)
    b = MicroBatcher(model, max_batch=4, max_wait_ms=50, queue_size=64)

    async def go():
        return await asyncio.gather(*(b.submit(_images(1, i)) for i in range(18)))

    outs = asyncio.run(_run(b, go))
    assert [float(o[0]) for o in outs] == [2.0 * i for i in range(18)]
    assert max(model.calls) == 4 and sum(model.calls) == 18 and len(model.calls) == 5


def test_max_batch_one_is_unbatched() -> None:
    model = _Model()
    b = MicroBatcher(model, max_batch=1, max_wait_ms=50, queue_size=64)

    async def go():
        return await asyncio.gather(*(b.submit(_images(1, i)) for i in range(6)))

    asyncio.run(_run(b, go))
    assert model.calls == [1] * 6


def test_lone_request_waits_at_most_max_wait() -> None:
    b = MicroBatcher(_Model(), max_batch=64, max_wait_ms=30, queue_size=8)

    async def go():
        t0 = time.perf_counter()
        await b.submit(_images(1))
        return time.perf_counter() - t0

    assert 0.025 <= asyncio.run(_run(b, go)) < 1.0


def test_full_queue_refuses_whole_request_without_queueing() -> None:
    started, release = threading.Event(), threading.Event()
    model = _Model()

    def blocked(x: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(5)
        return model(x)

    b = MicroBatcher(blocked, max_batch=1, max_wait_ms=0, queue_size=3)

    async def go():
        first = asyncio.create_task(b.submit(_images(1)))
        while not started.is_set():  # the event loop stays free while the model runs on its thread
            await asyncio.sleep(0.005)
        second = asyncio.create_task(b.submit(_images(2, 10)))
        await asyncio.sleep(0.01)
        assert b.pending == 2
        with pytest.raises(QueueFullError):
            await b.submit(_images(2, 20))  # 2 > 1 free slot: nothing of it is queued
        assert b.pending == 2
        release.set()
        return await first, await second

    first, second = asyncio.run(_run(b, go))
    assert first.tolist() == [0.0] and second.tolist() == [20.0, 22.0]
    assert model.calls == [1, 1, 1]


def test_failing_model_fails_its_requests_not_the_batcher() -> None:
    state = {"fail": True}

    def flaky(x: np.ndarray) -> np.ndarray:
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("boom")
        return x[:, 0, 0, 0].astype(np.float32)

    b = MicroBatcher(flaky, max_batch=8, max_wait_ms=1, queue_size=8)

    async def go():
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit(_images(1))
        return await b.submit(_images(1, 7))

    assert asyncio.run(_run(b, go)).tolist() == [7.0]


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(_Model(), max_batch=0)
