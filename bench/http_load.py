"""HTTP load: a real server on localhost, async clients, batching on and off, in one run.

    python -m bench.http_load [--duration 10] [--concurrency 1,8,64,256] [--out bench/results/http.json]

For each server configuration (dynamic batching on, then off = max batch size 1, then
on with two uvicorn workers) `ner-serve` is started on a free port; for each request
shape (1 and 32 sentences per request; one sentence only for the last two) and
concurrency level, that many clients send requests back to back for `--duration`
seconds. Sentences are msra-test sentences, cycled. Client and server share the
machine, as they would on a one-box deployment. The load generator is wrk (Debian
package `wrk`): a Python client would spend more CPU per request than the server does.
"""

from __future__ import annotations

import argparse
import json
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

from app.settings import Settings
from bench.processes import free_port, rss_mb, running
from training.corpora import load_corpus

DEFAULT_OUT = Path("bench/results/http.json")
WRK_SCRIPT = Path(__file__).with_name("wrk_tag.lua")
READY_TIMEOUT_S = 120


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
        # /readyz answered by one worker; the queue capacity gauge adds up the workers that have loaded the model.
        per_worker = int(environment.get("NER_QUEUE_CAPACITY", Settings.model_fields["queue_capacity"].default))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while queue_capacity(url) < per_worker * workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {workers} workers loaded the model within {READY_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")
            time.sleep(0.5)
        yield process, url


def queue_capacity(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next((float(line.split()[1]) for line in text.splitlines() if line.startswith("ner_queue_capacity ")), 0.0)


def worker_pids(process: subprocess.Popen) -> list[int]:
    """The uvicorn worker processes: the children of a multi-worker supervisor, else the process itself."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    return workers or [process.pid]


def load(url: str, bodies_file: Path, concurrency: int, duration: float, sentences: int, characters: float) -> dict:
    """wrk with `concurrency` connections, each sending the next body as soon as its answer came."""
    command = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(duration))}s", "--timeout", "60s", "-s", str(WRK_SCRIPT), url, "--", str(bodies_file)]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--concurrency", default="1,8,64,256")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
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

    report: dict = {"duration_per_point_s": args.duration, "runs": []}
    # (name, NER_* settings, workers, request shapes): batching off is max batch size 1.
    configurations = [
        ("batching on", {}, 1, (1, 32)),
        ("batching off", {"NER_MAX_BATCH_SENTENCES": "1"}, 1, (1,)),
        ("batching on, 2 workers", {}, 2, (1,)),
    ]
    for name, env, workers, request_shapes in configurations:
        with server(args.model, env, workdir / "server.log", workers) as (process, url):
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
            report.setdefault("server_rss_mb", {})[name] = [rss_mb(pid) for pid in worker_pids(process)]

    def figure(name: str, per_request: int, concurrency: int) -> float:
        return next(r["chars_per_second"] for r in report["runs"] if (r["server"], r["sentences_per_request"], r["concurrency"]) == (name, per_request, concurrency))

    if 64 in levels:
        report["batching_ratio_c64"] = figure("batching on", 1, 64) / figure("batching off", 1, 64)
        print(f"batching on / off at concurrency 64, 1 sentence per request: {report['batching_ratio_c64']:.2f}x", file=sys.stderr)
    print(f"server RSS after the benchmark: {report['server_rss_mb']}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
