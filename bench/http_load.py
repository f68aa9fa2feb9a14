"""HTTP load: a real server on localhost, async clients, batching on and off, in one run.

    python -m bench.http_load [--duration 10] [--concurrency 1,8,64,256] [--out bench/results/http.json]
    python -m bench.http_load --device cuda --precision fp16 --servers on,off --out bench/results/gpu-http.json
    python -m bench.http_load --device cuda --servers on --workers 4 --concurrency 64   # several workers sharing one GPU

For each server configuration (dynamic batching on, then off = max batch size 1, then
on with two uvicorn workers) `ner-serve` is started on a free port; for each request
shape (1 and 32 sentences per request; one sentence only for the last two) and
concurrency level, that many clients send requests back to back for `--duration`
seconds. Sentences are msra-test sentences, cycled. Client and server share the
machine, as they would on a one-box deployment. The load generator is wrk (Debian
package `wrk`): a Python client would spend more CPU per request than the server does.

Then, with batching on, each request shape is sent at half the peak request rate
measured above: the latency a service sees at half of its capacity. wrk paces it with
many connections that each wait a random think time between requests.

Each worker's resident memory is sampled throughout (its largest value is reported) and
read again once the queue has drained and the worker has been idle long enough to give
freed memory back (app.batcher.IDLE_TRIM_S): its footprint at rest after the load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.batcher import IDLE_TRIM_S
from app.settings import Settings
from bench.processes import free_port, peak_rss_mb, rss_mb, running
from model.artifact import PRECISIONS
from training.corpora import load_corpus

DEFAULT_OUT = Path("bench/results/http.json")
WRK_SCRIPT = Path(__file__).with_name("wrk_tag.lua")
READY_TIMEOUT_S = 120
# name -> (NER_* settings, workers, request shapes); batching off is max batch size 1
SERVERS: dict[str, tuple[dict[str, str], int, tuple[int, ...]]] = {
    "on": ({}, 1, (1, 32)),
    "off": ({"NER_MAX_BATCH_SENTENCES": "1"}, 1, (1,)),
    "2workers": ({}, 2, (1,)),
}
SERVER_NAMES = {"on": "batching on", "off": "batching off", "2workers": "batching on, 2 workers"}


@contextmanager
def server(model: str, env: dict[str, str], log: Path, workers: int = 1) -> Iterator[tuple[subprocess.Popen, str]]:
    """`ner-serve` with `workers` uvicorn workers, `model` and NER_* settings `env`, on a free port."""
    port = free_port()
    environment = {
        **os.environ,
        "NER_MODEL_PATH": model,
        "NER_TORCH_THREADS": "1",
        "NER_LOG_LEVEL": "warning",
        "NER_HOST": "127.0.0.1",
        "NER_PORT": str(port),
        "NER_WORKERS": str(workers),
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # ner-serve makes a fresh one for several workers
    command = [sys.executable, "-c", "from app.main import serve; serve()"]
    url = f"http://127.0.0.1:{port}"
    with running(command, f"{url}/readyz", log, environment) as process:
        # /readyz answered by one worker; the queue capacity gauge adds up the workers that are warm.
        per_worker = int(environment.get("NER_QUEUE_CAPACITY", Settings.model_fields["queue_capacity"].default))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while queue_capacity(url) < per_worker * workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {workers} workers warm within {READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")
            time.sleep(0.5)
        yield process, url


def gauge(url: str, name: str) -> float:
    """A gauge's value from the server's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next((float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} ")), 0.0)


def queue_capacity(url: str) -> float:
    return gauge(url, "ner_queue_capacity")


def wait_until_drained(url: str, timeout: float = 120) -> None:
    """Wait until the batching queue is empty: after an overload point the server still holds
    the requests wrk gave up on, and the next point must not start behind them."""
    deadline = time.monotonic() + timeout
    while gauge(url, "ner_queue_depth") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def worker_pids(process: subprocess.Popen) -> list[int]:
    """The uvicorn worker processes: the children of a multi-worker supervisor, else the process itself."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    return workers or [process.pid]


def load(url: str, bodies_file: Path, concurrency: int, duration: float, sentences: int, characters: float, think_ms: float = 0.0) -> dict:
    """wrk with `concurrency` connections, each sending the next body as soon as its answer
    came, or after a random think time of mean `think_ms`."""
    wait_until_drained(url)
    command = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(duration))}s", "--timeout", "60s", "-s", str(WRK_SCRIPT), url, "--", str(bodies_file), str(think_ms)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    summary = json.loads(next(line for line in output.splitlines() if line.startswith("WRKJSON "))[8:])
    errors = {k: summary[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts") if summary[k]}
    seconds = summary["duration_us"] / 1e6
    ok = summary["requests"] - summary["status_errors"]
    return {
        "concurrency": concurrency,
        "requests": summary["requests"],
        "errors": errors,
        "seconds": seconds,
        "chars_per_second": ok * characters / seconds,
        "sentences_per_second": ok * sentences / seconds,
        "p50_ms": summary["p50_us"] / 1000,
        "p95_ms": summary["p95_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
    }


def paced_load(url: str, bodies_file: Path, rate: float, duration: float, sentences: int, characters: float) -> dict:
    """About `rate` requests/s: wrk connections that each wait a random (exponential) think
    time between an answer and the next request, so arrivals are near Poisson and the load
    barely depends on the server's latency while that is short next to the think time. The
    mean think time is 0.5 s (from 2 to 512 connections): long enough for that, and short next to
    the server's keep-alive (NER_KEEP_ALIVE_S), which closes idle connections (wrk counts those as
    read errors)."""
    connections = min(512, max(2, math.ceil(rate / 2)))
    duration = min(3 * duration, max(duration, 300 / rate))  # at low rates, more time for enough requests for a p99
    point = load(url, bodies_file, connections, duration, sentences, characters, think_ms=connections / rate * 1000)
    point["target_requests_per_second"] = rate
    point["requests_per_second"] = point["sentences_per_second"] / sentences
    return point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--concurrency", default="1,8,64,256")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"which of {list(SERVERS)} to run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="the server's NER_DEVICE")
    parser.add_argument("--precision", default="int8", choices=list(PRECISIONS), help="the server's NER_PRECISION")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", help="another NER_* setting for every server")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the 'on' and 'off' servers (on a GPU they share it)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown server(s) {sorted(unknown)}; choose from {list(SERVERS)}")
    common_env = {"NER_DEVICE": args.device, "NER_PRECISION": args.precision, **dict(item.split("=", 1) for item in args.server_env)}
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed: apt-get install wrk")
    sentences = [e.text for e in load_corpus("msra-test")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    shapes: dict[int, tuple[Path, float]] = {}
    for per_request in (1, 32):
        groups = [sentences[i : i + per_request] for i in range(0, len(sentences) - per_request + 1, per_request)]
        path = workdir / f"bodies-{per_request}.jsonl"
        path.write_text("\n".join(json.dumps({"texts": g}, ensure_ascii=False) for g in groups) + "\n", encoding="utf-8")
        shapes[per_request] = (path, sum(len(t) for g in groups for t in g) / len(groups))

    report: dict = {"duration_per_point_s": args.duration, "device": args.device, "precision": args.precision, "server_env": common_env, "workers": args.workers, "runs": [], "half_peak": []}
    for key in servers:
        env, workers, request_shapes = SERVERS[key]
        name = SERVER_NAMES[key]
        if key in ("on", "off") and args.workers > 1:
            workers, name = args.workers, f"{name}, {args.workers} workers"
        with server(args.model, {**common_env, **env}, workdir / "server.log", workers) as (process, url), peak_rss_mb(worker_pids(process)) as peaks:
            load(url, shapes[1][0], 4, 2.0, 1, shapes[1][1])  # warm-up
            for per_request in request_shapes:
                for concurrency in levels:
                    point = load(url, shapes[per_request][0], concurrency, args.duration, per_request, shapes[per_request][1])
                    point.update({"server": name, "sentences_per_request": per_request})
                    report["runs"].append(point)
                    print(
                        f"{name:22s} {per_request:2d} sent/req c={concurrency:3d}: {point['chars_per_second']:9.0f} chars/s "
                        f"p50 {point['p50_ms']:7.1f} p95 {point['p95_ms']:7.1f} p99 {point['p99_ms']:7.1f} ms errors {point['errors']}",
                        file=sys.stderr,
                    )
                if key == "on":
                    peak = max(r["sentences_per_second"] / per_request for r in report["runs"] if r["server"] == name and r["sentences_per_request"] == per_request)
                    point = paced_load(url, shapes[per_request][0], peak / 2, args.duration, per_request, shapes[per_request][1])
                    point.update({"server": name, "sentences_per_request": per_request, "peak_requests_per_second": peak})
                    report["half_peak"].append(point)
                    print(
                        f"{name:22s} {per_request:2d} sent/req paced at half of peak ({peak / 2:.0f} of {peak:.0f} req/s): {point['chars_per_second']:9.0f} chars/s "
                        f"p50 {point['p50_ms']:7.1f} p95 {point['p95_ms']:7.1f} p99 {point['p99_ms']:7.1f} ms errors {point['errors']}",
                        file=sys.stderr,
                    )
            report.setdefault("server_peak_rss_mb", {})[name] = list(peaks)
            # At rest: the queue empty and the workers idle long enough to give freed memory back.
            wait_until_drained(url)
            time.sleep(IDLE_TRIM_S + 1)
            report.setdefault("server_rss_mb", {})[name] = [rss_mb(pid) for pid in worker_pids(process)]

    def figure(name: str, per_request: int, concurrency: int) -> float:
        return next(r["chars_per_second"] for r in report["runs"] if (r["server"], r["sentences_per_request"], r["concurrency"]) == (name, per_request, concurrency))

    if 64 in levels and {"on", "off"} <= set(servers) and args.workers == 1:
        report["batching_ratio_c64"] = figure("batching on", 1, 64) / figure("batching off", 1, 64)
        print(f"batching on / off at concurrency 64, 1 sentence per request: {report['batching_ratio_c64']:.2f}x", file=sys.stderr)
    print(f"server RSS after the benchmark, at rest: {report['server_rss_mb']}; largest while under load: {report['server_peak_rss_mb']}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
