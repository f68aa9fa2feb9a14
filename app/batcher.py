"""Dynamic micro-batching: chunks of concurrent requests share one forward pass.

Requests put their chunks (sentences after the Tagger's chunking) into one bounded
queue, one lane per request. One inference thread owns the model and the batching loop:
it fills a batch from the oldest requests first, each taking at most half a batch while
others wait, so that a small request is not stuck behind a huge one; when the model was idle it waits
at most `max_wait_ms` for more, closes the batch at `max_batch_sentences` or
`max_batch_chars`, sorts it by length and runs it. Each chunk's future gets its spans
back on the event loop, so results return to their requests in order. A full queue
refuses new work (QueueFull -> 503) rather than queueing forever; a request with more
sentences than the whole queue holds could never be admitted (TooManySentences -> 413).

The loop runs on the inference thread, not as an event-loop task, so the next batch
starts as soon as the last one ends instead of waiting its turn behind every HTTP
callback the event loop has ready. Measured at 64 clients on 2 cores, one sentence per
request: 355 requests/s as an event-loop task, 416 on the thread (both with a 0.2 ms
GIL switch interval; see Settings.switch_interval_ms).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from app import metrics
from app.settings import FAULT_MARKER, Settings
from model.memory import release_free_memory
from model.tagger import TASKS, Chunk, ChunkSpans, Tagger

log = logging.getLogger("app.batcher")

# Freed heap pages go back to the OS (model.memory.release_free_memory) every TRIM_INTERVAL_S
# while batches run, and once the model has been idle for IDLE_TRIM_S: batches of varying
# shapes leave freed blocks that glibc keeps mapped (the int8 path's RSS plateaued 200 MB
# above fp32's without the periodic trim), and after a burst the worker otherwise kept
# 60-80 MB of them until its next request.
TRIM_INTERVAL_S = 2.0
IDLE_TRIM_S = 1.0


class QueueFull(Exception):
    """The queue holds `queue_capacity` sentences already."""


class TooManySentences(Exception):
    """A request with more sentences than `queue_capacity`: it could never be admitted."""

    def __init__(self, sentences: int):
        super().__init__(f"{sentences} sentences")
        self.sentences = sentences


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


class Batcher:
    def __init__(self, tagger: Tagger, settings: Settings):
        self.tagger = tagger
        self.settings = settings
        self._lanes: deque[deque[_Item]] = deque()  # one per request with sentences waiting, served in turn
        self._queued = 0  # sentences in all lanes
        # The most sentences one request may put into a batch while others wait. Taking turns
        # (round robin) finished equal requests together and cost 32-sentence requests at 64
        # clients about a fifth of their throughput (bench.http_load, 2 rounds); oldest first
        # with a share of half a batch is first in, first out for requests up to that size and
        # still gives a small request behind a huge one the other half of the next batch.
        self._share = max(1, settings.max_batch_sentences // 2)
        self._changed = threading.Condition()  # guards _lanes, _queued and _stopping
        self._accepting = True
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._last_trim = time.monotonic()
        self._batches_since_trim = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def close(self) -> None:
        """Refuse new work, finish what is queued, then stop the thread."""
        self._accepting = False
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # -- requests (event loop) -------------------------------------------------

    def submit(self, chunks: Sequence[Chunk], tasks: Sequence[str], fault: bool = False) -> asyncio.Future[list[ChunkSpans]]:
        """A future of the labels for `chunks`, in order. Raises TooManySentences, QueueFull and
        NotAccepting at once; the future raises QueueTimeout or BatchFailed. Cancelling it (the
        client left) cancels the sentences still queued. A future rather than a coroutine: the
        route awaits it without wrapping it in a task of its own."""
        loop = asyncio.get_running_loop()
        if not chunks:
            nothing: asyncio.Future[list[ChunkSpans]] = loop.create_future()
            nothing.set_result([])
            return nothing
        if len(chunks) > self.settings.queue_capacity:
            raise TooManySentences(len(chunks))
        if not self._accepting:
            raise NotAccepting()
        items = [_Item(chunk, tuple(tasks), loop.create_future(), fault=fault) for chunk in chunks]
        with self._changed:
            if self._queued + len(items) > self.settings.queue_capacity:
                raise QueueFull()
            self._lanes.append(deque(items))
            self._queued += len(items)
            depth = self._queued
            self._changed.notify()
        metrics.QUEUE_DEPTH.set(depth)
        labels = asyncio.gather(*(item.future for item in items))

        def skip_the_rest(labels: asyncio.Future) -> None:
            # One chunk failed (cancelling `labels` cancels every chunk itself): the thread skips the rest.
            if not labels.cancelled() and labels.exception() is not None:
                for item in items:
                    item.future.cancel()

        labels.add_done_callback(skip_the_rest)
        return labels

    # -- the loop (inference thread) -------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        while True:
            try:
                batch = self._collect()
                if batch is None:
                    return
                if batch:
                    self._execute(batch)
                elif self._batches_since_trim:
                    self._release_memory()
            except Exception:  # a bug here must not stop the thread and hang every later request
                log.exception("batching loop error; continuing")

    def _collect(self) -> list[_Item] | None:
        """The next batch, one sentence from each waiting request in turn; None once stopped and
        empty; empty when the queue stayed empty for IDLE_TRIM_S after a batch. When the model
        was idle, the first sentence waits up to max_wait_ms for the batch to fill."""
        settings = self.settings
        expired: list[_Item] = []
        batch: list[_Item] = []
        with self._changed:
            was_idle = not self._queued
            while not self._queued:
                if self._stopping:
                    return None
                if not self._changed.wait(IDLE_TRIM_S if self._batches_since_trim else None):
                    return []
            # Sentences that queued up during the last batch have waited long enough; only
            # a sentence that finds the model idle waits for others to join it.
            deadline = time.monotonic() + settings.max_wait_ms / 1000
            while was_idle and self._queued < settings.max_batch_sentences and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            chars = 0
            now = time.monotonic()
            full = False
            while self._lanes and not full:
                for lane in self._lanes:  # oldest request first, each up to its share
                    taken = 0
                    while lane and taken < self._share:
                        item = lane[0]
                        if now - item.enqueued > settings.request_timeout_s or item.future.done():
                            # the whole request queued together, and a client that left cancelled all of it
                            expired.extend(item for item in lane if not item.future.done())
                            self._queued -= len(lane)
                            lane.clear()
                            break
                        if len(batch) == settings.max_batch_sentences or (batch and chars + len(item.chunk) > settings.max_batch_chars):
                            full = True
                            break
                        batch.append(item)
                        chars += len(item.chunk)
                        lane.popleft()
                        self._queued -= 1
                        taken += 1
                    if full:
                        break
                self._lanes = deque(lane for lane in self._lanes if lane)
            depth = self._queued
        metrics.QUEUE_DEPTH.set(depth)
        if expired:
            self._settle(expired, error=QueueTimeout())
        return batch

    def _execute(self, batch: list[_Item]) -> None:
        batch.sort(key=lambda item: len(item.chunk))
        tasks = tuple(task for task in TASKS if any(task in item.tasks for item in batch))
        now = time.monotonic()
        for item in batch:
            metrics.QUEUE_WAIT.observe(now - item.enqueued)
        fault = self.settings.fault_injection and any(item.fault for item in batch)
        started = time.perf_counter()
        try:
            spans = self._infer([item.chunk for item in batch], tasks, fault)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("batch of %d sentences failed, error id %s", len(batch), error_id)
            metrics.BATCH_ERRORS.inc()
            self._settle(batch, error=BatchFailed(error_id))
            return
        metrics.INFERENCE_TIME.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(batch))
        self._settle(batch, spans=spans)

    def _settle(self, items: list[_Item], spans: list[ChunkSpans] | None = None, error: Exception | None = None) -> None:
        """Hand results (or one error for all) to the items' futures, on the event loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_set_futures, [item.future for item in items], spans, error)

    def _infer(self, chunks: list[Chunk], tasks: tuple[str, ...], fault: bool) -> list[ChunkSpans]:
        if fault:
            raise RuntimeError("injected fault (NER_FAULT_INJECTION is on and a text carried the fault marker)")
        spans = self.tagger.infer(chunks, tasks)
        self._batches_since_trim += 1
        if time.monotonic() - self._last_trim > TRIM_INTERVAL_S:
            self._release_memory()
        return spans

    def _release_memory(self) -> None:
        release_free_memory()
        self._last_trim = time.monotonic()
        self._batches_since_trim = 0


def _set_futures(futures: list[asyncio.Future], spans: list[ChunkSpans] | None, error: Exception | None) -> None:
    for index, future in enumerate(futures):
        if future.done():  # cancelled meanwhile: the client went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            assert spans is not None
            future.set_result(spans[index])


def wants_fault(texts: Sequence[str], settings: Settings) -> bool:
    return settings.fault_injection and any(FAULT_MARKER in text for text in texts)
