"""Every Prometheus metric of the service, defined in one place (DESIGN.md "Metrics contract").

One process (uvicorn with one worker, tests): the default registry, with
prometheus-client's own process_* and python_* metrics.

Several workers: prometheus-client's multiprocess mode. PROMETHEUS_MULTIPROC_DIR must be
set before the workers import this module; `ner-serve` sets it when NER_WORKERS > 1 and
empties it at start (`prepare_multiprocess_dir`). Every worker writes its values to files
there and /metrics, answered by any one worker, adds them up. Live gauges of workers that
died are dropped at each scrape; their counters stay, so totals never go back.
prometheus-client has no process metrics in this mode, so `WorkerProcessCollector` reads
CPU and memory of every live worker from /proc, labelled by pid.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

disable_created_metrics()  # the *_created series only clutter dashboards


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR (or its old lower-case spelling), None when unset."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


# prometheus-client picks file-backed values when it is imported, so the mode of this
# process is fixed now; a variable set later (by `ner-serve`, for its workers) must not
# switch /metrics of this process to reading a directory it never wrote to.
MULTIPROCESS_DIR = multiprocess_dir()
if MULTIPROCESS_DIR:
    # The metrics below open their files there at once (e.g. a fresh tmpfs /tmp in the image).
    Path(MULTIPROCESS_DIR).mkdir(parents=True, exist_ok=True)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("ner_requests", "HTTP requests by endpoint (route) and status code.", ["endpoint", "code"])
REQUEST_DURATION = Histogram("ner_request_duration_seconds", "HTTP request duration by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS)
QUEUE_WAIT = Histogram("ner_queue_wait_seconds", "Time a sentence waited in the batching queue.", buckets=LATENCY_BUCKETS)
INFERENCE_TIME = Histogram("ner_inference_seconds", "Model time per batch (features, forward pass, decoding).", buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("ner_batch_size_sentences", "Sentences (chunks) per batch.", buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge("ner_queue_depth", "Sentences waiting in the batching queues (all workers).", multiprocess_mode="livesum")
QUEUE_CAPACITY = Gauge("ner_queue_capacity", "Sentences the batching queues may hold (NER_QUEUE_CAPACITY times the live workers past their warm-up).", multiprocess_mode="livesum")
CHARACTERS = Counter("ner_characters", "Characters tagged.")
ENTITIES = Counter("ner_entities", "Entities returned, by type.", ["type"])
MODEL_INFO = Gauge("ner_model_info", "The loaded model (value 1).", ["name", "version", "device"], multiprocess_mode="max")
BATCH_ERRORS = Counter("ner_batch_errors", "Batches that failed with an exception.")
REJECTED = Counter("ner_rejected", "Requests refused before tagging, by reason.", ["reason"])

# The names as exposed (counters gain _total; histograms expose _bucket, _sum and _count).
METRIC_NAMES = (
    "ner_requests_total",
    "ner_request_duration_seconds",
    "ner_queue_wait_seconds",
    "ner_inference_seconds",
    "ner_batch_size_sentences",
    "ner_queue_depth",
    "ner_queue_capacity",
    "ner_characters_total",
    "ner_entities_total",
    "ner_model_info",
    "ner_batch_errors_total",
    "ner_rejected_total",
)


_PID_IN_FILE_NAME = re.compile(r"_(\d+)\.db$")


def prepare_multiprocess_dir(workers: int = 1) -> str | None:
    """Get the multiprocess directory ready before the workers start; returns it, or None for single-process mode.

    With several workers and no PROMETHEUS_MULTIPROC_DIR, a fresh folder under the temp
    dir is used and the variable set, so the workers inherit it. Files of earlier runs
    are removed: their counters would add up with this run's.
    """
    path = multiprocess_dir()
    if not path and workers > 1:
        path = tempfile.mkdtemp(prefix="ner-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        atexit.register(shutil.rmtree, path, True)
    if not path:
        return None
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    own_suffix = f"_{os.getpid()}.db"  # this process's files are open already (metrics made at import)
    for file in folder.glob("*.db"):
        if not file.name.endswith(own_suffix):
            file.unlink(missing_ok=True)
    return path


def pids_with_files(path: str) -> set[int]:
    """Processes that wrote metric files into the multiprocess directory `path`."""
    pids = set()
    for file in Path(path).glob("*.db"):
        match = _PID_IN_FILE_NAME.search(file.name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def is_live_worker(pid: int) -> bool:
    """True for this process and for running processes with the same parent (the other workers).

    Checking the parent, not only that the pid exists, guards against a pid reused by an
    unrelated process after a worker died.
    """
    if pid == os.getpid():
        return True
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): existence is all we can check
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    state, parent = fields[0], int(fields[1])
    return state not in ("Z", "X") and parent == os.getppid()


def live_worker_pids(path: str) -> list[int]:
    """The workers now alive that write into `path` (always including this process)."""
    return sorted(pid for pid in pids_with_files(path) | {os.getpid()} if is_live_worker(pid))


def drop_dead_workers(path: str) -> None:
    """Remove the live-gauge files of processes that are gone (a worker that crashed and was replaced)."""
    for pid in pids_with_files(path):
        if not is_live_worker(pid):
            prometheus_multiprocess.mark_process_dead(pid, path)


class WorkerProcessCollector:
    """process_* metrics (CPU seconds, resident and virtual memory, open fds, start time) of every live worker, label pid.

    The same names as prometheus-client's single-process ProcessCollector, so dashboards
    that sum over pids work in both modes.
    """

    def __init__(self, path: str):
        self.path = path

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for pid in live_worker_pids(self.path):
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return list(merged.values())


def render() -> tuple[bytes, str]:
    """The exposition text of all metrics (of all workers in multiprocess mode) and its content type."""
    if MULTIPROCESS_DIR:
        drop_dead_workers(MULTIPROCESS_DIR)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
        registry.register(WorkerProcessCollector(MULTIPROCESS_DIR))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
