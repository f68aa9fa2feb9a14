"""Child processes for benchmarks and tests: start a server, wait until it answers, stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) so far of each thread of a process, by thread id, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


@contextmanager
def peak_rss_mb(pids: Sequence[int], interval: float = 0.1) -> Iterator[list[float]]:
    """The largest resident memory of each process while the block runs, sampled every
    `interval` s (the list fills in as the block runs; final when it ends)."""
    peaks = [rss_mb(pid) for pid in pids]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            for index, pid in enumerate(pids):
                peaks[index] = max(peaks[index], rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        done.set()
        sampler.join()


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it is still there after `timeout` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running(command: Sequence[str], ready_url: str, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120) -> Iterator[subprocess.Popen]:
    """Run `command` (output to `log`) until `ready_url` answers 200; stopped on exit.

    Raises RuntimeError with the log's text if the process exits or is not ready in time.
    """
    with open(log, "wb") as handle:
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} not ready after {timeout} s:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield process
    finally:
        stop(process)
