"""Overload (issue 6, part 3): a flood beyond a small queue gets 503 + Retry-After, nothing worse.

The server runs with NER_QUEUE_CAPACITY=32 sentences and small batches, and many
concurrent clients send multi-sentence texts. Checks: some 503 with Retry-After and
a message, no other 5xx, the server's RSS (from /proc) stays within a fixed margin
of its size before the flood, and normal answers come back once the flood stops.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, run_server
from tests.test_bad_input import bundle_under_test

QUEUE_CAPACITY = 32  # sentences
CONCURRENT_CLIENTS = 200
FLOOD_REQUESTS = 800
FLOOD_TEXT = "江泽民在北京大学发表讲话。" * 8  # 8 sentences: 4 requests fill the queue
RSS_MARGIN_MB = 150  # generous: 200 open connections and their buffers, no queue growth


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc/PID/status."""
    found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if found is None:  # a zombie: the process has exited and not yet been reaped
        raise ProcessLookupError(f"process {pid} has exited")
    return int(found.group(1)) / 1024


class RssSampler(threading.Thread):
    """Samples a process's RSS every 50 ms until stopped; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (ProcessLookupError, FileNotFoundError):
                return  # the server is gone; the test's requests fail and say so

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


async def flood(url: str) -> tuple[Counter[int], list[httpx.Response], list[str]]:
    """FLOOD_REQUESTS requests, CONCURRENT_CLIENTS at a time; statuses, the 503 answers, and
    the requests that got no answer (when, and what the client saw: the server's log says why)."""
    statuses: Counter[int] = Counter()
    refusals: list[httpx.Response] = []
    unanswered: list[str] = []
    remaining = iter(range(FLOOD_REQUESTS))
    limits = httpx.Limits(max_connections=CONCURRENT_CLIENTS, max_keepalive_connections=CONCURRENT_CLIENTS)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            for _ in remaining:
                try:
                    response = await client.post("/tag", json={"text": FLOOD_TEXT})
                except httpx.TransportError as problem:
                    unanswered.append(f"{time.monotonic() - started:.1f} s into the flood: {problem!r}")
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    refusals.append(response)

        await asyncio.gather(*(one_client() for _ in range(CONCURRENT_CLIENTS)))
    return statuses, refusals, unanswered


def metric(url: str, series: str) -> float:
    """The sum of the samples of `series` (a name, optionally with its first labels) on /metrics."""
    values = []
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(series) and line[len(series)] in " {,}":
            values.append(float(line.rsplit(" ", 1)[1]))
    return sum(values)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"NER_QUEUE_CAPACITY": str(QUEUE_CAPACITY), "NER_MAX_BATCH_SENTENCES": "8", "NER_MAX_WAIT_MS": "5"}
    with run_server(bundle_under_test(request), tmp_path_factory.mktemp("overload"), env) as live:
        yield live


def test_flood_beyond_the_queue_gets_503_and_then_recovers(server: Server) -> None:
    for _ in range(20):  # warm the allocator before taking the baseline
        assert httpx.post(f"{server.url}/tag", json={"text": FLOOD_TEXT}, timeout=30).status_code == 200
    baseline = rss_mb(server.process.pid)
    sampler = RssSampler(server.process.pid)
    sampler.start()
    started = time.monotonic()
    statuses, refusals, unanswered = asyncio.run(flood(server.url))
    seconds = time.monotonic() - started
    peak = sampler.stop()
    print(f"\noverload: {FLOOD_REQUESTS} requests in {seconds:.1f} s, statuses {dict(statuses)}, RSS {baseline:.0f} MB before, peak {peak:.0f} MB")

    assert not unanswered, f"{len(unanswered)} requests got no answer: {unanswered[:5]}"
    assert set(statuses) <= {200, 503}, f"unexpected statuses {statuses}"
    assert statuses[503] > 0, "the flood never filled the queue"
    assert statuses[200] > 0
    for response in refusals:
        assert response.headers["retry-after"].isdigit()
        assert "overloaded" in response.json()["error"]
    assert peak - baseline < RSS_MARGIN_MB, f"RSS grew from {baseline:.0f} MB to {peak:.0f} MB"
    assert metric(server.url, 'ner_rejected_total{reason="queue_full"') == statuses[503]

    # The flood is over: the queue empties and normal answers come back.
    assert metric(server.url, "ner_queue_depth") == 0
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    for _ in range(5):
        response = httpx.post(f"{server.url}/tag", json={"text": FLOOD_TEXT}, timeout=30)
        assert response.status_code == 200
    assert server.process.poll() is None
