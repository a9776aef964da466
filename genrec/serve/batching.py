"""Request batching for the model deployments: many concurrent calls, one model call.

`Batcher` forms the next batch only when the model is free. Whatever queued while the model computed
goes into that batch together (up to max_batch_size); a model that was idle waits up to
`wait_s` after the first request for more to arrive, then starts with what it has.

Why not `@serve.batch`: in Ray Serve 2.60 its queue cuts a new batch every wait window whether or
not the last one has finished, and those batches then wait in turn for the model
(max_concurrent_batches=1). Under load a compute-bound model so gets a queue of one- and two-request
batches instead of one large one: bench/results/serve_load.md measured a mean of 1.4 requests per
batch at 16 concurrent clients.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


class Batcher:
    """`await batcher(item)` -> fn([item, ...])[position], with fn (a list in, a list of the same
    length out) run in a worker thread so the replica's event loop keeps accepting requests."""

    def __init__(self, fn: Callable[[list], list], max_batch_size: int, wait_s: float) -> None:
        self.fn = fn
        self.configure(max_batch_size, wait_s)
        self.queue: asyncio.Queue | None = None  # made on the first call, on the replica's event loop
        self.worker: asyncio.Task | None = None
        self.batches = 0  # batches formed, and the requests in them: /v1/models shows both
        self.requests = 0

    def configure(self, max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and wait_s >= 0, got {max_batch_size}, {wait_s}")
        self.max_batch_size, self.wait_s = max_batch_size, wait_s

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self.queue is None:
            self.queue = asyncio.Queue()
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._serve())
        future = loop.create_future()
        self.queue.put_nowait((item, future))
        return await future  # a cancelled caller (a request timeout) leaves its item out of the batch

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.batches += 1
            self.requests += len(batch)
            try:
                results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} requests")
            except Exception as error:  # every caller of the batch gets the error; the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future]]:
        """The queued requests that are still awaited, up to max_batch_size: all that wait now, then,
        if there is room, whatever arrives within wait_s of the first."""
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.cancelled()]

    def stats(self) -> dict:
        return {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.wait_s,
                "batches": self.batches, "requests": self.requests,
                "mean_batch_size": self.requests / self.batches if self.batches else None}
