"""genrec.serve.batching.Batcher on a bare event loop (no Ray): batches form when the model is free."""
import asyncio
import threading
import time

import pytest

from genrec.serve.batching import Batcher


class SlowModel:
    """Doubles each item; each call takes `seconds` and records the batch it got."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.batches = seconds, []
        self.busy = threading.Event()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.busy.set()
        time.sleep(self.seconds)
        return [2 * item for item in items]


def test_what_queues_while_the_model_computes_is_one_batch():
    """One request starts the model; 12 arriving 1 ms apart while it computes (well past the 5 ms
    wait) go into the next call together, and every caller gets its own answer."""
    model = SlowModel(0.2)
    batcher = Batcher(model, max_batch_size=16, wait_s=0.005)

    async def main():
        first = asyncio.create_task(batcher(0))
        while not model.busy.is_set():
            await asyncio.sleep(0.001)
        rest = []
        for item in range(1, 13):
            rest.append(asyncio.create_task(batcher(item)))
            await asyncio.sleep(0.001)
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [2 * item for item in range(13)]
    assert model.batches == [[0], list(range(1, 13))]
    assert batcher.stats()["mean_batch_size"] == 6.5


def test_max_batch_size_splits_the_queue_and_an_idle_model_waits_for_company():
    model = SlowModel(0.05)
    batcher = Batcher(model, max_batch_size=4, wait_s=0.05)

    async def main():
        # 10 at once: 4 + 4 + 2 in arrival order
        assert await asyncio.gather(*(batcher(i) for i in range(10))) == [2 * i for i in range(10)]
        # an idle model: a request 20 ms after the first, within the 50 ms wait, shares its call
        first = asyncio.create_task(batcher(100))
        await asyncio.sleep(0.02)
        assert await asyncio.gather(first, batcher(101)) == [200, 202]

    asyncio.run(main())
    assert model.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [100, 101]]


def test_a_failing_batch_fails_its_callers_only_and_a_cancelled_caller_is_left_out():
    calls = []

    def model(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    batcher = Batcher(model, max_batch_size=8, wait_s=0.01)

    async def main():
        results = await asyncio.gather(batcher("bad"), batcher("a"), return_exceptions=True)
        assert [type(r) for r in results] == [ValueError, ValueError]
        gone = asyncio.create_task(batcher("gone"))
        await asyncio.sleep(0)  # queued, then cancelled (a request timeout) before its batch forms
        gone.cancel()
        assert await batcher("b") == "B"  # the worker lives on after a failed batch

    asyncio.run(main())
    assert calls == [["bad", "a"], ["b"]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(lambda items: items, max_batch_size=0, wait_s=0.01)
