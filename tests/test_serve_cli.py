"""`ner-serve`, the production entry point: its options come from Settings and say what is wrong (issue 21, finding 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.http_load import worker_pids
from bench.processes import free_port, stop
from tests.conftest import READY_LINE, ROOT, run_server

NER_SERVE = str(Path(sys.executable).parent / "ner-serve")


def ner_serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "NER_TORCH_THREADS": "1", **env}
    return subprocess.run([NER_SERVE, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


def test_help_prints_the_settings_and_starts_nothing() -> None:
    result = ner_serve("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: ner-serve" in result.stdout
    for variable in ("NER_HOST", "NER_PORT", "NER_WORKERS", "NER_MODEL_PATH", "NER_PRECISION"):
        assert variable in result.stdout
    assert "Uvicorn running" not in result.stderr


@pytest.mark.parametrize(
    "variable,value,expected",
    [("NER_PORT", "99999", "less than or equal to 65535"), ("NER_WORKERS", "abc", "valid integer"), ("NER_PRECISION", "int4", "'fp32', 'int8' or 'fp16'")],
)
def test_a_bad_setting_stops_start_up_with_a_message_naming_it(variable: str, value: str, expected: str) -> None:
    result = ner_serve(**{variable: value})
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr and expected in result.stderr and repr(value) in result.stderr
    assert "Traceback" not in result.stderr


def test_fp16_on_the_cpu_is_said_at_start_up(tiny_bundle: Path, tmp_path: Path) -> None:
    with run_server(tiny_bundle, tmp_path, {"NER_DEVICE": "cpu", "NER_PRECISION": "fp16"}) as server:
        assert "NER_PRECISION=fp16 on the CPU" in server.output()


def test_jieba_start_up_lines_come_once_through_the_service_log(tiny_bundle: Path, tmp_path: Path) -> None:
    with run_server(tiny_bundle, tmp_path, {"NER_LOG_LEVEL": "debug"}) as server:
        output = server.output()
    assert output.count("Prefix dict has been built") == 1, output[:3000]
    assert "DEBUG jieba: Prefix dict has been built" in output  # in our format, at our level


def test_no_line_per_request_unless_asked(tiny_bundle: Path, tmp_path: Path) -> None:
    """Issue 25: at the default log level every request wrote two lines (uvicorn's access line
    and the service's own), most of the log under load. Off by default; NER_ACCESS_LOG=true."""
    for env, logged in (({}, False), ({"NER_ACCESS_LOG": "true"}, True)):
        with run_server(tiny_bundle, tmp_path, env) as server:
            response = httpx.post(f"{server.url}/tag", json={"text": "江泽民在北京。"}, timeout=30)
            assert response.status_code == 200
            time.sleep(0.2)
            output = server.output()
        assert ("POST /tag HTTP/1.1" in output) is logged, env
        assert (f"tag {response.headers['x-request-id']}: 1 texts" in output) is logged, env
        assert "ready" in output  # the start-up lines stay


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_killed_by_a_crash_leaves_its_python_stack_in_the_log(tiny_bundle: Path, tmp_path: Path, workers: int) -> None:
    """A crash in native code (a segfault in an extension) ended a server with nothing in its
    log; `ner-serve` turns on faulthandler, in its workers too, so the log says where it was."""
    with run_server(tiny_bundle, tmp_path, workers=workers) as server:
        [victim, *_] = worker_pids(server.process)
        os.kill(victim, signal.SIGSEGV)
        deadline = time.monotonic() + 20
        while "Fatal Python error: Segmentation fault" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        output = server.output()
    assert "Fatal Python error: Segmentation fault" in output, output[-3000:]
    assert "most recent call first" in output  # the threads' Python stacks follow


@pytest.mark.parametrize("workers", [1, 2])
def test_a_client_that_connects_during_start_up_gets_its_answer_not_503(shipped_bundle: Path, tmp_path: Path, workers: int) -> None:
    """A worker accepted connections before its warm-up batch and answered /tag 503 meanwhile;
    with several workers /readyz, answered by a warm one, said ready while another still
    answered 503 (the compose check in CI failed on it). A client sending from the first
    moment, each request on a new connection, must get only 200s.

    With two workers, each worker process also starts 8 s late, as on a busy or small host
    (importing the app took 5.2 s on this VM beside a training run): uvicorn's supervisor
    killed a worker that had not answered its health check within 5 s and started another,
    in a loop, so the service never came up (NER_WORKER_HEALTHCHECK_S)."""
    port = free_port()
    log = tmp_path / "server.log"
    environment = {**os.environ, "NER_MODEL_PATH": str(shipped_bundle), "NER_TORCH_THREADS": "1", "NER_PORT": str(port), "NER_WORKERS": str(workers)}
    if workers > 1:
        slow_start = tmp_path / "slow_start"
        slow_start.mkdir()
        # Only in the worker processes uvicorn spawns, before they can answer the supervisor.
        (slow_start / "sitecustomize.py").write_text('import sys, time\nif "--multiprocessing-fork" in sys.argv:\n    time.sleep(8)\n')
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(slow_start), os.environ.get("PYTHONPATH")]))
    with open(log, "wb") as handle:
        process = subprocess.Popen([NER_SERVE], cwd=ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT)
    statuses: list[int] = []
    try:
        deadline = time.monotonic() + 90
        # Until every worker is warm, and ten requests more.
        while log.read_text(errors="replace").count(READY_LINE) < workers or len(statuses) < 10 + statuses.count(503):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/tag", json={"text": "张三去了上海。"}, timeout=60)
            except httpx.ConnectError:  # not listening yet
                time.sleep(0.01)
                continue
            statuses.append(response.status_code)
    finally:
        stop(process)
    assert statuses and set(statuses) == {200}, f"{statuses.count(503)} of {len(statuses)} answered 503: {statuses}"
