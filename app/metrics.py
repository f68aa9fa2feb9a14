"""Every Prometheus metric of the service, defined in one place (DESIGN.md "Metrics contract").

With several worker processes, prometheus-client's multiprocess mode is used: set
PROMETHEUS_MULTIPROC_DIR (the app prepares it at start, see `prepare_multiprocess_dir`)
and /metrics aggregates the files of all workers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # the *_created series only clutter dashboards

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("ner_requests", "HTTP requests by endpoint and status code.", ["endpoint", "code"])
REQUEST_DURATION = Histogram("ner_request_duration_seconds", "HTTP request duration by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS)
QUEUE_WAIT = Histogram("ner_queue_wait_seconds", "Time a sentence waited in the batching queue.", buckets=LATENCY_BUCKETS)
INFERENCE_TIME = Histogram("ner_inference_seconds", "Model time per batch (features, forward pass, decoding).", buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("ner_batch_size_sentences", "Sentences (chunks) per batch.", buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge("ner_queue_depth", "Sentences waiting in the batching queue.", multiprocess_mode="livesum")
CHARACTERS = Counter("ner_characters", "Characters tagged.")
ENTITIES = Counter("ner_entities", "Entities returned, by type.", ["type"])
MODEL_INFO = Gauge("ner_model_info", "The loaded model (value 1).", ["name", "version", "device"], multiprocess_mode="max")
BATCH_ERRORS = Counter("ner_batch_errors", "Batches that failed with an exception.")
REJECTED = Counter("ner_rejected", "Requests refused before tagging, by reason.", ["reason"])

METRIC_NAMES = (
    "ner_requests_total",
    "ner_request_duration_seconds",
    "ner_queue_wait_seconds",
    "ner_inference_seconds",
    "ner_batch_size_sentences",
    "ner_queue_depth",
    "ner_characters_total",
    "ner_entities_total",
    "ner_model_info",
    "ner_batch_errors_total",
    "ner_rejected_total",
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def prepare_multiprocess_dir() -> None:
    """Empty the multiprocess directory before workers start (stale files of dead runs)."""
    path = multiprocess_dir()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def mark_worker_dead(pid: int) -> None:
    """Drop the live gauges of a worker that exited (gunicorn/uvicorn supervisor hook)."""
    if multiprocess_dir():
        prometheus_multiprocess.mark_process_dead(pid)


def render() -> tuple[bytes, str]:
    """The exposition text of all metrics (all workers in multiprocess mode)."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
