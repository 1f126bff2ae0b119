"""Dynamic batching: concurrent requests are merged into one model run, up to a token budget and a short wait,
run off the event loop on one worker thread, and split back in order.

Each request arrives already tokenized (so its token count is known when it is queued). The worker takes the first
waiting request, then keeps taking requests while the merged batch stays within `max_tokens` real tokens and
`max_texts` texts, waiting at most `max_wait` seconds for more. A request larger than the budget runs alone (the
Embedder splits it into model batches). If the model fails on a merged batch, only the requests in it fail."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class _Job:
    encodings: Sequence[Any]
    tokens: int
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(
        self, run: Callable[[Sequence[Any]], np.ndarray], *, max_tokens: int = 8192, max_texts: int = 256,
        max_wait: float = 0.005, observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """run(encodings) -> (n, width) float32: the model call (blocking; it runs on the worker thread).
        observe(metric, value) receives "batch_texts", "batch_tokens", "queue_seconds" and "run_seconds"."""
        self._run = run
        self.max_tokens = max_tokens
        self.max_texts = max_texts
        self.max_wait = max_wait
        self._observe = observe or (lambda name, value: None)
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolx-model")
        self._task: asyncio.Task | None = None
        self._pending: _Job | None = None  # taken from the queue but did not fit the previous batch
        self.closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def embed(self, encodings: Sequence[Any]) -> np.ndarray:
        """The embeddings of one request's texts, in order."""
        if self.closed:
            raise RuntimeError("the server is shutting down")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(encodings, sum(len(e.ids) for e in encodings), future))
        return await future

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, and stop the worker."""
        self.closed = True
        await self._queue.put(None)
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            first = self._pending or await self._queue.get()
            self._pending = None
            if first is None:
                return
            batch, stop = await self._collect(first)
            await self._execute(batch)
            if stop:
                while not self._queue.empty():  # drain what arrived before close (close puts None last)
                    job = self._queue.get_nowait()
                    if job is not None:
                        await self._execute([job])
                return

    async def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        batch, tokens, texts = [first], first.tokens, len(first.encodings)
        deadline = time.perf_counter() + self.max_wait
        while tokens < self.max_tokens and texts < self.max_texts:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if job is None:
                return batch, True
            if tokens + job.tokens > self.max_tokens or texts + len(job.encodings) > self.max_texts:
                self._pending = job
                break
            batch.append(job)
            tokens += job.tokens
            texts += len(job.encodings)
        return batch, False

    async def _execute(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.done()]  # a client that went away cancelled its future
        if not live:
            return
        encodings = [e for job in live for e in job.encodings]
        start = time.perf_counter()
        for job in live:
            self._observe("queue_seconds", start - job.queued)
        self._observe("batch_texts", len(encodings))
        self._observe("batch_tokens", sum(job.tokens for job in live))
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, encodings)
        except Exception as e:  # the model failed: only this batch's requests fail
            for job in live:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        finally:
            self._observe("run_seconds", time.perf_counter() - start)
        row = 0
        for job in live:
            n = len(job.encodings)
            if not job.future.done():
                job.future.set_result(vectors[row:row + n])
            row += n
