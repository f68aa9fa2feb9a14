"""Dynamic micro-batching: chunks of concurrent requests share one forward pass.

Requests put their chunks (sentences after the Tagger's chunking) into one bounded
queue. A single loop takes the oldest chunk, waits at most `max_wait_ms` for more,
closes the batch at `max_batch_sentences` or `max_batch_chars`, sorts it by length
and runs it on the one inference thread that owns the model, off the event loop.
Each chunk's future gets its labels back, so results return to their requests in
order. A full queue refuses new work (QueueFull -> 503) rather than queueing forever.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app import metrics
from app.settings import FAULT_MARKER, Settings
from model.tagger import TASKS, Chunk, ChunkLabels, Tagger

log = logging.getLogger("app.batcher")

TRIM_INTERVAL_S = 2.0


def _find_malloc_trim():
    """glibc's malloc_trim, or None on other C libraries."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_malloc_trim()


class QueueFull(Exception):
    """The queue holds `queue_capacity` sentences already."""


class QueueTimeout(Exception):
    """A sentence waited longer than `request_timeout_s`."""


class BatchFailed(Exception):
    """The batch this request was in raised; `error_id` is in the log."""

    def __init__(self, error_id: str):
        super().__init__(f"batch failed (error id {error_id})")
        self.error_id = error_id


class NotAccepting(Exception):
    """The batcher is shutting down."""


@dataclass
class _Item:
    chunk: Chunk
    tasks: tuple[str, ...]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    fault: bool = False


@dataclass
class BatcherStats:
    """The batcher's own counters (also exported as metrics)."""

    batches: int = 0
    sentences: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


class Batcher:
    def __init__(self, tagger: Tagger, settings: Settings):
        self.tagger = tagger
        self.settings = settings
        self.stats = BatcherStats()
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._accepting = True
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference", initializer=torch.set_num_threads, initargs=(settings.torch_threads,))
        self._task: asyncio.Task | None = None
        self._last_trim = time.monotonic()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Refuse new work, finish what is queued, then stop the loop and the thread."""
        self._accepting = False
        while self._queue:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def run_sync(self, function, *args):
        """Run `function` on the inference thread (e.g. the warm-up batch)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- requests --------------------------------------------------------------

    async def submit(self, chunks: Sequence[Chunk], tasks: Sequence[str], fault: bool = False) -> list[ChunkLabels]:
        """Labels for `chunks`, in order. Raises QueueFull, QueueTimeout, BatchFailed, NotAccepting."""
        if not chunks:
            return []
        if not self._accepting:
            raise NotAccepting()
        if len(self._queue) + len(chunks) > self.settings.queue_capacity:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        items = [_Item(chunk, tuple(tasks), loop.create_future(), fault=fault) for chunk in chunks]
        self._queue.extend(items)
        metrics.QUEUE_DEPTH.set(len(self._queue))
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            # Client gone or one chunk failed: the loop skips the rest (cancelled futures).
            for item in items:
                item.future.cancel()
            raise

    # -- the loop --------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._collect()
            metrics.QUEUE_DEPTH.set(len(self._queue))
            if not batch:
                continue
            await self._execute(loop, batch)

    async def _collect(self) -> list[_Item]:
        """The next batch: oldest first, waiting up to max_wait_ms for it to fill."""
        settings = self.settings
        deadline = time.monotonic() + settings.max_wait_ms / 1000
        while len(self._queue) < settings.max_batch_sentences and time.monotonic() < deadline:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(deadline - time.monotonic(), 0))
            except TimeoutError:
                break
        batch: list[_Item] = []
        chars = 0
        now = time.monotonic()
        while self._queue and len(batch) < settings.max_batch_sentences:
            item = self._queue[0]
            if item.future.done():  # cancelled: the client went away
                self._queue.popleft()
                continue
            if now - item.enqueued > settings.request_timeout_s:
                self._queue.popleft()
                item.future.set_exception(QueueTimeout())
                continue
            if batch and chars + len(item.chunk) > settings.max_batch_chars:
                break
            self._queue.popleft()
            batch.append(item)
            chars += len(item.chunk)
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        batch.sort(key=lambda item: len(item.chunk))
        tasks = tuple(task for task in TASKS if any(task in item.tasks for item in batch))
        now = time.monotonic()
        for item in batch:
            metrics.QUEUE_WAIT.observe(now - item.enqueued)
        fault = self.settings.fault_injection and any(item.fault for item in batch)
        started = time.perf_counter()
        try:
            labels = await loop.run_in_executor(self._executor, self._infer, [item.chunk for item in batch], tasks, fault)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("batch of %d sentences failed, error id %s", len(batch), error_id)
            self.stats.failed_batches += 1
            metrics.BATCH_ERRORS.inc()
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BatchFailed(error_id))
            return
        metrics.INFERENCE_TIME.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(batch))
        self.stats.batches += 1
        self.stats.sentences += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for item, result in zip(batch, labels):
            if not item.future.done():
                item.future.set_result(result)

    def _infer(self, chunks: list[Chunk], tasks: tuple[str, ...], fault: bool) -> list[ChunkLabels]:
        if fault:
            raise RuntimeError("injected fault (NER_FAULT_INJECTION is on and a text carried the fault marker)")
        labels = self.tagger.infer(chunks, tasks)
        now = time.monotonic()
        if _malloc_trim is not None and now - self._last_trim > TRIM_INTERVAL_S:
            # Batches of varying shapes leave freed blocks that glibc keeps mapped; the int8
            # path's RSS plateaued 200 MB above fp32's without this.
            self._last_trim = now
            _malloc_trim(0)
        return labels


def wants_fault(texts: Sequence[str], settings: Settings) -> bool:
    return settings.fault_injection and any(FAULT_MARKER in text for text in texts)
