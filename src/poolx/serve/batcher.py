"""Dynamic batching: concurrent requests are merged into model runs up to a token budget, run off the event loop
on worker threads, and split back in order.

Each request arrives already tokenized (so its token count is known when it is queued). A free worker takes the
first waiting request and every request queued behind it while the merged batch stays within `max_tokens` real
tokens and `max_texts` texts (continuous batching: what queues up during a run is the next batch, and a free model
never waits when there is work). Only when nothing else is queued does it wait `max_wait` seconds for company (0 by
default: on the CPU that wait measured as pure latency; see benchmarks/RESULTS.md). With several workers (CPU
cores) several batches run at once, and a request bigger than a worker's share of the budget is queued in pieces
so that it runs on all of them. If the model fails on a batch, only the requests in it fail."""

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


_STOP = object()  # the stop mark close() queues behind the last request


class Batcher:
    def __init__(
        self, run: Callable[[Sequence[Any]], np.ndarray], *, max_tokens: int = 8192, max_texts: int = 256,
        max_wait: float = 0.0, workers: int = 1, observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """run(encodings) -> (n, width) float32: the model call (blocking; it runs on a worker thread, and with
        workers > 1 on several at once, so it must be thread-safe, as onnxruntime's Session.run is).
        observe(metric, value) receives "batch_texts", "batch_tokens", "queue_seconds" and "run_seconds"."""
        self._run = run
        self.max_tokens = max_tokens
        self.max_texts = max_texts
        self.max_wait = max_wait
        self.workers = workers
        self._observe = observe or (lambda name, value: None)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # _Job, or _STOP
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poolx-model")
        self._tasks: list[asyncio.Task] = []
        self._busy = 0  # workers running a batch
        self.closed = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop()) for _ in range(self.workers)]

    async def embed(self, encodings: Sequence[Any]) -> np.ndarray:
        """The embeddings of one request's texts, in order. A request larger than a worker's share of the token
        budget is queued in pieces, so that with several workers (CPU cores) a big request runs on all of them."""
        if self.closed:
            raise RuntimeError("the server is shutting down")
        loop = asyncio.get_running_loop()
        share = max(1, self.max_tokens // self.workers)
        futures, piece, tokens = [], [], 0
        for e in encodings:
            if piece and (tokens + len(e.ids) > share or len(piece) >= self.max_texts):
                futures.append(self._put(loop, piece, tokens))
                piece, tokens = [], 0
            piece.append(e)
            tokens += len(e.ids)
        futures.append(self._put(loop, piece, tokens))
        if len(futures) == 1:
            return await futures[0]
        try:
            return np.concatenate(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # a failed or abandoned request: its other pieces need not run
                future.cancel()
            raise

    def _put(self, loop: asyncio.AbstractEventLoop, encodings: Sequence[Any], tokens: int) -> asyncio.Future:
        future: asyncio.Future = loop.create_future()
        self._queue.put_nowait(_Job(encodings, tokens, future))
        return future

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, and stop the workers."""
        self.closed = True
        self._queue.put_nowait(_STOP)  # everything queued before the stop mark is still run
        await asyncio.gather(*self._tasks)
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        pending: Any = None  # taken from the queue but did not fit the previous batch (or the stop mark)
        while True:
            first = pending if pending is not None else await self._queue.get()
            if first is _STOP:
                self._queue.put_nowait(_STOP)  # pass the stop mark on to the other workers
                return
            batch, pending = await self._collect(first)
            self._busy += 1
            try:
                await self._execute(batch)
            finally:
                self._busy -= 1

    async def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """A batch starting with `first`, and the job that ended it without fitting (or the stop mark)."""
        batch, tokens, texts = [first], first.tokens, len(first.encodings)
        if self.max_wait > 0 and self._queue.empty():
            # Wait for company only when nothing else is queued (an idle model); requests that queued up during a
            # run are a batch already, and waiting then would only idle the model. (A plain sleep, not
            # wait_for(queue.get()): in Python 3.11 that can drop an item when the timeout and the get coincide.)
            await asyncio.sleep(self.max_wait)
        # With several workers idle, each takes its share of the queue, so one does not take it all while the
        # others wait for requests that only come once it is done.
        share = -(-(self._queue.qsize() + 1) // max(1, self.workers - self._busy))
        while tokens < self.max_tokens and texts < self.max_texts and len(batch) < share:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if job is _STOP or tokens + job.tokens > self.max_tokens or texts + len(job.encodings) > self.max_texts:
                return batch, job
            batch.append(job)
            tokens += job.tokens
            texts += len(job.encodings)
        return batch, None

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
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # the model failed (a Rust panic is a BaseException): only this batch's requests fail
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
