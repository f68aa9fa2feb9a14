"""GET /metrics of real servers on localhost: the metrics contract, with one worker and with several."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.settings import FAULT_MARKER
from tests.conftest import Server, run_server

TEXTS = ["江泽民在北京大学发表讲话。", "张三去了上海。", "中国人民银行和国务院在北京召开会议，李鹏总理出席。"]
MAX_TEXTS = 4  # NER_MAX_TEXTS of the servers below, so that `send_traffic` gets one 413
TRAFFIC_ENV = {"NER_MAX_TEXTS": str(MAX_TEXTS), "NER_FAULT_INJECTION": "1"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def parse(text: str) -> Samples:
    """Every sample of an exposition text: (name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum over the samples called `metric` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == metric and wanted <= got)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def exported_names(text: str) -> set[str]:
    """The metric names a query could use: every sample name, plus the names of metrics declared without samples yet.

    A labelled counter has no series before its first label value (ner_entities_total
    before a model found an entity); its HELP and TYPE lines still declare it.
    """
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"), "info": ("_info",)}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def send_traffic(server: Server, rounds: int = 1) -> dict:
    """A mix of answered, refused and failed requests; returns what the server should have counted."""
    expected: dict = {"codes": Counter(), "characters": 0, "entities": Counter()}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(rounds):
            answers = [client.post("/tag", json={"text": text}) for text in TEXTS]
            answers.append(client.post("/tag", json={"texts": TEXTS}))
            for answer in answers:
                assert answer.status_code == 200, answer.text
                for result in answer.json()["results"]:
                    expected["characters"] += len(result["text"])
                    expected["entities"].update(entity["type"] for entity in result["entities"])
            expected["codes"]["/tag", "200"] += len(answers)
            assert client.post("/tag", json={"texts": TEXTS[:1] * (MAX_TEXTS + 1)}).status_code == 413
            assert client.post("/tag", json={"txt": "no such field"}).status_code == 422
            assert client.post("/tag", json={"text": "坏" + FAULT_MARKER}).status_code == 500
            assert client.get("/no-such-page").status_code == 404
            expected["codes"].update({("/tag", "413"): 1, ("/tag", "422"): 1, ("/tag", "500"): 1, ("other", "404"): 1})
    return expected


def check_contract(samples: Samples, expected: dict, workers: int) -> None:
    """Every metric of the contract is there with the values the traffic implies."""
    for (endpoint, code), count in expected["codes"].items():
        assert value(samples, "ner_requests_total", endpoint=endpoint, code=code) == count, (endpoint, code)
    tag_requests = sum(count for (endpoint, _), count in expected["codes"].items() if endpoint == "/tag")
    assert value(samples, "ner_request_duration_seconds_count", endpoint="/tag") == tag_requests
    assert value(samples, "ner_request_duration_seconds_bucket", endpoint="/tag", le="+Inf") == tag_requests
    assert value(samples, "ner_request_duration_seconds_sum", endpoint="/tag") > 0
    assert value(samples, "ner_characters_total") == expected["characters"]
    assert {labels["type"]: value(samples, "ner_entities_total", **labels) for labels in series(samples, "ner_entities_total")} == dict(expected["entities"])
    # Every sentence waited in the queue once and went through one batch (warm-up batches included).
    batches = value(samples, "ner_batch_size_sentences_count")
    sentences = value(samples, "ner_batch_size_sentences_sum")
    assert batches >= workers + 1
    assert sentences >= len(TEXTS) * 2 and sentences >= batches
    assert value(samples, "ner_queue_wait_seconds_count") >= sentences + 1  # + the sentence(s) of the failed batch
    assert value(samples, "ner_inference_seconds_count") == batches
    assert value(samples, "ner_inference_seconds_sum") > 0
    assert value(samples, "ner_batch_errors_total") == 1
    assert value(samples, "ner_rejected_total", reason="too_many_texts") == 1
    assert value(samples, "ner_queue_depth") == 0
    assert value(samples, "ner_queue_capacity") == 4096 * workers
    [info] = series(samples, "ner_model_info")
    assert info == {"name": "tiny", "version": "0.0.1", "device": "cpu-int8"}
    assert value(samples, "ner_model_info") == 1
    assert value(samples, "process_resident_memory_bytes") > 50e6
    assert value(samples, "process_cpu_seconds_total") > 0
    for name in metrics.METRIC_NAMES:
        if name == "ner_entities_total" and not expected["entities"]:
            continue  # no series before the first entity (the tiny model finds none)
        assert any(n == name or n.startswith(name + "_") for n, _ in samples), name


def test_one_worker_exports_the_contract(tiny_bundle: Path, tmp_path: Path) -> None:
    with run_server(tiny_bundle, tmp_path, TRAFFIC_ENV) as server:
        expected = send_traffic(server)
        text = scrape(server)
    check_contract(parse(text), expected, workers=1)
    assert "# TYPE ner_entities_total counter" in text  # declared even before the first entity


def requests_by_pid(directory: Path, endpoint: str) -> dict[int, float]:
    """ner_requests_total{endpoint} as each worker wrote it into its own file of the multiprocess directory."""
    counts = {}
    for file in directory.glob("counter_*.db"):
        pid = int(file.stem.split("_")[1])
        merged = MultiProcessCollector.merge([str(file)])
        counts[pid] = sum(s.value for m in merged for s in m.samples if s.name == "ner_requests_total" and s.labels.get("endpoint") == endpoint)
    return counts


def worker_pids(samples: Samples) -> set[str]:
    return {labels["pid"] for labels in series(samples, "process_start_time_seconds")}


def wait_for(server: Server, condition: Callable[[Samples], bool], what: str, timeout: float = 120) -> Samples:
    """Scrape until `condition` holds for the samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = parse(scrape(server))
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}\n{server.output()[-3000:]}"
        time.sleep(0.5)


def test_two_workers_add_up_and_a_dead_worker_leaves_no_live_gauges(tiny_bundle: Path, tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    # No PROMETHEUS_MULTIPROC_DIR: ner-serve makes one in the temp dir for its 2 workers.
    with run_server(tiny_bundle, tmp_path, {**TRAFFIC_ENV, "TMPDIR": str(temp)}, workers=2) as server:
        [directory] = temp.glob("ner-metrics-*")
        expected = send_traffic(server)
        # Fresh connections until both workers have answered some (the kernel picks the worker).
        health = 0
        while len([n for n in requests_by_pid(directory, "/healthz").values() if n > 0]) < 2:
            assert health < 400, "400 connections all went to one worker"
            for _ in range(10):
                assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
            health += 10
        expected["codes"]["/healthz", "200"] = health

        samples = parse(scrape(server))
        check_contract(samples, expected, workers=2)
        workers = worker_pids(samples)
        assert len(workers) == 2

        # A worker dies; uvicorn starts another. Its counts stay, its live gauges go.
        killed = sorted(workers)[0]
        batches = value(samples, "ner_batch_size_sentences_count")
        os.kill(int(killed), signal.SIGKILL)
        samples = wait_for(
            server,
            lambda samples: len(worker_pids(samples) - {killed}) == 2 and value(samples, "ner_batch_size_sentences_count") > batches,
            "a new worker replaced the killed one and warmed up",
        )
        assert killed not in worker_pids(samples)
        for (endpoint, code), count in expected["codes"].items():
            assert value(samples, "ner_requests_total", endpoint=endpoint, code=code) == count
        assert value(samples, "ner_characters_total") == expected["characters"]
        assert value(samples, "ner_queue_capacity") == 4096 * 2  # not 3 workers' worth
        assert not list(directory.glob(f"gauge_live*_{killed}.db"))
        assert (directory / f"counter_{killed}.db").exists()
        assert series(samples, "ner_model_info") == [{"name": "tiny", "version": "0.0.1", "device": "cpu-int8"}]
    assert not directory.exists()  # ner-serve removes the folder it made


def test_prepare_multiprocess_dir_removes_files_of_earlier_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    stale = tmp_path / "counter_999999.db"
    own = tmp_path / f"counter_{os.getpid()}.db"  # this process's metrics, made when it imported them
    stale.write_bytes(b"x")
    own.write_bytes(b"x")
    assert metrics.prepare_multiprocess_dir(workers=2) == str(tmp_path)
    assert own.exists() and not stale.exists()


def test_prepare_multiprocess_dir_makes_one_only_for_several_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores the variable as it was, set or not,
        monkeypatch.delenv(name)  # after prepare_multiprocess_dir set it
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert metrics.prepare_multiprocess_dir(workers=1) is None
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    made = metrics.prepare_multiprocess_dir(workers=2)
    assert made and Path(made).parent == tmp_path and Path(made).is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == made
