"""Faults (issue 6, part 5) against real uvicorn processes.

- A broken bundle (missing, corrupt, wrong format version): the server does not start,
  exits non-zero, and its output names the file and the problem.
- An exception in one batch (NER_FAULT_INJECTION and app.settings.FAULT_MARKER) fails
  only that batch's requests; the next requests succeed.
- A client that disconnects while its request is queued leaves no work behind: its
  sentences are never run and the queue empties.
- SIGTERM drains: the in-flight request completes and the process exits 0.
- With `--workers 2`, a killed worker is replaced and the service keeps answering.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.settings import FAULT_MARKER
from model.tagger import Tagger
from tests.conftest import ROOT, Server, free_port, run_server
from tests.test_bad_input import bundle_under_test, long_cjk
from tests.test_overload import metric

SENTENCE = "江泽民在北京大学发表讲话。"
# Keeps the single inference thread busy for seconds: BLOCKER_TEXTS x 667 chunks with the tiny model.
BLOCKER = long_cjk(100_000)
BLOCKER_TEXTS = 5


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- a broken bundle: no start, a clear message -----------------------------------------


def remove_network(bundle: Path) -> None:
    (bundle / "network.pt").unlink()


def remove_metadata(bundle: Path) -> None:
    (bundle / "metadata.json").unlink()


def remove_folder(bundle: Path) -> None:
    shutil.rmtree(bundle)


def corrupt_network(bundle: Path) -> None:
    data = (bundle / "network.pt").read_bytes()
    (bundle / "network.pt").write_bytes(data[: len(data) // 2])  # a truncated copy


def corrupt_metadata(bundle: Path) -> None:
    (bundle / "metadata.json").write_text('{"format_version": 1, "name": ', encoding="utf-8")


def future_format_version(bundle: Path) -> None:
    metadata = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))
    metadata["format_version"] = 99
    (bundle / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")


BROKEN_BUNDLES = [
    ("missing network file", remove_network, "network.pt", "missing"),
    ("missing metadata file", remove_metadata, "metadata.json", "missing"),
    ("missing bundle folder", remove_folder, "", "no such folder"),
    ("corrupt network file", corrupt_network, "network.pt", "corrupt, TorchScript could not load it"),
    ("corrupt metadata file", corrupt_metadata, "metadata.json", "corrupt, not valid JSON"),
    ("wrong format version", future_format_version, "metadata.json", "bundle format version 99, this code reads version 1"),
]


@pytest.mark.parametrize(("breakage", "file_name", "problem"), [case[1:] for case in BROKEN_BUNDLES], ids=[case[0] for case in BROKEN_BUNDLES])
def test_a_broken_bundle_stops_the_server_with_a_clear_message(request: pytest.FixtureRequest, tmp_path: Path, breakage: Callable[[Path], None], file_name: str, problem: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_under_test(request), bundle)
    breakage(bundle)
    environment = {**os.environ, "NER_MODEL_PATH": str(bundle), "NER_TORCH_THREADS": "1"}
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port", str(free_port())]
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    assert f"{bundle / file_name}".rstrip("/") in output, output
    assert problem in output, output


# -- one server with the fault hook on ----------------------------------------------------


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(bundle_under_test(request), tmp_path_factory.mktemp("faults"), {"NER_FAULT_INJECTION": "true", "NER_MAX_WAIT_MS": "20"}) as live:
        yield live


def test_a_failing_batch_fails_only_its_own_requests(server: Server) -> None:
    url = f"{server.url}/tag"
    failed = httpx.post(url, json={"text": f"坏了{FAULT_MARKER}"}, timeout=30)
    assert failed.status_code == 500
    error_id = failed.json()["error_id"]
    assert error_id in failed.json()["error"]
    assert error_id in server.output(), "the error id must lead to the traceback in the log"
    assert httpx.post(url, json={"text": SENTENCE}, timeout=30).status_code == 200

    # Concurrent requests: those that shared the faulty batch fail with its error id, the rest succeed.
    batch_errors_before = metric(server.url, "ner_batch_errors_total")
    with ThreadPoolExecutor(12) as pool:
        normal = [pool.submit(httpx.post, url, json={"text": SENTENCE}, timeout=30) for _ in range(11)]
        faulty = pool.submit(httpx.post, url, json={"text": f"坏了{FAULT_MARKER}"}, timeout=30).result()
        answers = [future.result() for future in normal]
    assert faulty.status_code == 500
    for answer in answers:
        assert answer.status_code in (200, 500)
        if answer.status_code == 500:
            assert answer.json()["error_id"] == faulty.json()["error_id"], "only the faulty batch may fail"
    assert metric(server.url, "ner_batch_errors_total") == batch_errors_before + 1
    for _ in range(5):
        assert httpx.post(url, json={"text": SENTENCE}, timeout=30).status_code == 200


def test_a_client_that_leaves_while_queued_leaves_no_work_behind(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # The blocker runs as one batch, so the others queue behind it whatever the turn order
    # (requests take turns within the queue, not within a running batch).
    one_batch = {"NER_MAX_BATCH_SENTENCES": "4096", "NER_MAX_BATCH_CHARS": "1000000"}
    with run_server(bundle_under_test(request), tmp_path, one_batch) as server:
        check_departed_clients_leave_no_work(server, request)


def check_departed_clients_leave_no_work(server: Server, request: pytest.FixtureRequest) -> None:
    blocker_chunks = BLOCKER_TEXTS * len(Tagger.load(bundle_under_test(request), "cpu").prepare(BLOCKER).chunks)
    abandoned_text = "今天天气很好。" * 5  # 5 sentences each
    abandoning_clients = 20
    sentences_before = metric(server.url, "ner_batch_size_sentences_sum")
    waits_before = metric(server.url, "ner_queue_wait_seconds_count")
    gone_before = metric(server.url, 'ner_requests_total{code="499",endpoint="/tag"')
    clients = [httpx.Client(base_url=server.url, timeout=0.5) for _ in range(abandoning_clients)]  # made up front: they cost time

    def abandon(client: httpx.Client) -> str:
        try:
            client.post("/tag", json={"text": abandoned_text})
            return "answered"
        except httpx.TimeoutException:
            return "left"

    with ThreadPoolExecutor(abandoning_clients + 1) as pool:
        blocker = pool.submit(httpx.post, f"{server.url}/tag", json={"texts": [BLOCKER] * BLOCKER_TEXTS}, timeout=120)
        # its batch has started once its sentences' queue waits are recorded
        wait_until(lambda: metric(server.url, "ner_queue_wait_seconds_count") >= waits_before + blocker_chunks, 60, "the blocker's batch to start")
        outcomes = list(pool.map(abandon, clients))
        assert blocker.result().status_code == 200
    for client in clients:
        client.close()
    assert outcomes == ["left"] * abandoning_clients, "the blocker finished too early for this test"
    wait_until(lambda: metric(server.url, 'ner_requests_total{code="499",endpoint="/tag"') == gone_before + abandoning_clients, 30, "the server to notice")
    assert metric(server.url, "ner_queue_depth") == 0
    ran = metric(server.url, "ner_batch_size_sentences_sum") - sentences_before
    assert ran == blocker_chunks, f"{ran - blocker_chunks} sentences of departed clients were still run"
    assert httpx.post(f"{server.url}/tag", json={"text": SENTENCE}, timeout=30).status_code == 200


# -- SIGTERM drains -------------------------------------------------------------------------


def start_ner_serve(bundle: Path, log: Path) -> Server:
    """The production entry point (`ner-serve`, the Docker CMD) on a free port, once ready."""
    port = free_port()
    environment = {**os.environ, "NER_MODEL_PATH": str(bundle), "NER_TORCH_THREADS": "1", "NER_HOST": "127.0.0.1", "NER_PORT": str(port)}
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-c", "from app.main import serve; serve()"], cwd=ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT)
    server = Server(process, port, log)

    def ready() -> bool:
        assert process.poll() is None, server.output()
        try:
            return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 90, "ner-serve to be ready")
    return server


def send_blocker(server: Server) -> tuple[threading.Thread, list[httpx.Response]]:
    """The blocker (BLOCKER_TEXTS x BLOCKER) sent from a thread, once it is queued; the list
    gets its answer."""
    answers: list[httpx.Response] = []
    blocker = {"texts": [BLOCKER] * BLOCKER_TEXTS}
    sender = threading.Thread(target=lambda: answers.append(httpx.post(f"{server.url}/tag", json=blocker, timeout=120)))
    sender.start()
    wait_until(lambda: metric(server.url, "ner_queue_depth") > 0, 60, "the request to be queued")
    return sender, answers


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server = start_ner_serve(bundle_under_test(request), tmp_path / "ner-serve.log")
    try:
        request, answers = send_blocker(server)
        server.process.send_signal(signal.SIGTERM)
        request.join(timeout=120)
        assert server.process.wait(timeout=60) == 0, server.output()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    [answer] = answers
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert len(results) == BLOCKER_TEXTS
    assert all("".join(token["text"] for token in result["tokens"]) == BLOCKER for result in results)
    assert "batcher drained" in server.output()


# -- several workers -------------------------------------------------------------------------


def worker_pids(supervisor: int) -> set[int]:
    """The uvicorn worker processes (multiprocessing spawn children) of `supervisor`."""
    pids = set()
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                pids.add(int(child))
    return pids


def tag_until_ok(url: str, attempts: int = 200) -> int:
    """Tags one sentence, retrying connection errors and 503s; the number of failed attempts."""
    for failures in range(attempts):
        try:
            if httpx.post(f"{url}/tag", json={"text": SENTENCE}, timeout=30).status_code == 200:
                return failures
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no answer after {attempts} attempts")


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    with run_server(bundle_under_test(request), tmp_path, workers=2) as server:
        supervisor = server.process.pid
        wait_until(lambda: len(worker_pids(supervisor)) == 2, 60, "two workers")
        before = worker_pids(supervisor)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        failed_attempts = tag_until_ok(server.url)  # the surviving worker answers meanwhile
        wait_until(lambda: len(worker_pids(supervisor)) == 2 and victim not in worker_pids(supervisor), 90, "a replacement worker")
        replacement = worker_pids(supervisor) - before
        assert len(replacement) == 1
        [new_worker] = replacement

        def replacement_is_ready() -> bool:
            output = server.output()
            started = output.find(f"Started server process [{new_worker}]")
            return started >= 0 and "warm-up batch done; ready" in output[started:]

        wait_until(replacement_is_ready, 90, "the replacement to warm up")
        statuses = [httpx.post(f"{server.url}/tag", json={"text": SENTENCE}, timeout=30).status_code for _ in range(40)]
        print(f"\nworkers: killed {victim}, replaced by {replacement}; {failed_attempts} failed attempts right after the kill")
        assert statuses == [200] * 40
        assert server.process.poll() is None
