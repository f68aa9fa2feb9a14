"""Shared fixtures: a tiny bundle trained once per session, and real servers on localhost."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.processes import free_port, running

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_BUNDLE = ROOT / "model" / "artifacts" / "default"
READY_LINE = "warm-up batch done; ready"  # each worker logs it (app/main.py)

torch.set_num_threads(1)  # tests share 2 cores with servers they start


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained on a few hundred sentences (seconds); exercises the real training code."""
    from training.config import TrainConfig
    from training.train import train

    out = tmp_path_factory.mktemp("tiny") / "bundle"
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    train(config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def shipped_bundle() -> Path:
    if not (SHIPPED_BUNDLE / "network.pt").is_file():
        pytest.fail(f"the shipped bundle {SHIPPED_BUNDLE} is missing")
    return SHIPPED_BUNDLE


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def post_mortem(self, lines: int = 60) -> str:
        """Whether the server still runs (or how it ended) and the end of its log."""
        code = self.process.poll()
        state = "still running" if code is None else f"exited with {code}" + (f" (signal {-code})" if code < 0 else "")
        tail = "\n".join(self.output().splitlines()[-lines:])
        return f"server pid {self.process.pid} on port {self.port}: {state}; last {lines} lines of {self.log}:\n{tail}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """A failed test that used a server shows how the server fared: a server that died
    (a signal, a crash) otherwise leaves only a client's connection error to read."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            # not isinstance: test modules import this file as tests.conftest, pytest as conftest
            if type(value).__name__ == "Server":
                report.sections.append(("server", value.post_mortem()))
    return report


@contextmanager
def run_server(bundle: Path, tmp_path: Path, env: dict[str, str] | None = None, workers: int = 1, ready_timeout: float = 90) -> Iterator[Server]:
    """`ner-serve` (the production entry point, the Docker CMD) on a free localhost port with
    NER_* settings from `env`; stopped at the end."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    # PROMETHEUS_MULTIPROC_DIR only if the test names one: otherwise ner-serve makes its own.
    inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    environment = {**inherited, "NER_MODEL_PATH": str(bundle), "NER_TORCH_THREADS": "1", "NER_HOST": "127.0.0.1", "NER_PORT": str(port), "NER_WORKERS": str(workers), **(env or {})}
    command = [sys.executable, "-c", "from app.main import serve; serve()"]
    with running(command, f"http://127.0.0.1:{port}/readyz", log, environment, ROOT, ready_timeout) as process:
        server = Server(process, port, log)
        # /readyz answered by one worker says nothing of the others, still loading (requests
        # wait for a warm worker meanwhile): a test that needs every worker waits for each one's line.
        deadline = time.monotonic() + ready_timeout
        expected = int(environment["NER_WORKERS"])
        while server.output().count(READY_LINE) < expected:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{expected} workers not all ready after {ready_timeout} s:\n{server.output()}")
            time.sleep(0.1)
        yield server


LAC_TOKENS = [" ", "中", "国", "万", "北京", "OOV"]


def write_lac(folder: Path, dim: int = 4) -> np.ndarray:
    """A LAC-shaped source: row i of the table is i + 1 in every column."""
    table = np.repeat(np.arange(1, len(LAC_TOKENS) + 1, dtype=np.float32)[:, None], dim, axis=1)
    conf, model = folder / "LAC" / "lac_model" / "conf", folder / "LAC" / "lac_model" / "model"
    conf.mkdir(parents=True)
    model.mkdir(parents=True)
    (conf / "word.dic").write_text("".join(f"{i}\t{token}\n" for i, token in enumerate(LAC_TOKENS)), encoding="utf-8")
    (conf / "q2b.dic").write_text("萬\t万\n國\t国\n", encoding="utf-8")
    description = b"\x08\x05\x10\x06\x10\x04"  # any bytes: only their length D matters
    header = b"\0" * 16 + struct.pack("<i", len(description)) + description
    (model / "word_emb").write_bytes(header + table.tobytes())
    return table
