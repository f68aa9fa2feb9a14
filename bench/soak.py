"""Soak: a steady load on a real server for a set time; errors, memory and latency over time.

    python -m bench.soak --duration 600 --json bench/results/soak.json          (the record)
    python -m bench.soak --model PATH --duration 50 --json /tmp/soak.json        (CI, via tests/test_soak.py)
    python -m bench.soak --url http://127.0.0.1:8000 --pid 1234 --duration 600  (a server already running)

Without --url the script starts its own server (uvicorn, one worker, NER_TORCH_THREADS=1)
on a free localhost port and stops it with SIGTERM at the end. Requests arrive at a fixed
rate (--rate per second, open loop: a slow answer does not slow the arrivals, up to
--concurrency in flight) and cycle through a fixed mix of short and long texts.

The first --warmup seconds are not judged. After them the run is cut into --windows
equal windows; for each: requests, latency p50/p99 and the median of the server's RSS
(VmRSS from /proc every second, summed over the server process and its children). Verdict:
  errors == 0; RSS growth < 5 %: the last window's median RSS over the first's;
  p99 stable: the largest window p99 at most --p99-ratio times the smallest.
The figures are printed and written as JSON (--json); exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.processes import free_port, running

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "model" / "artifacts" / "default"
RSS_GROWTH_LIMIT_PERCENT = 5.0

# A fixed mix: mostly one sentence, some paragraphs, now and then a long text.
SENTENCES = [
    "江泽民在北京大学发表讲话。",
    "国务院总理李鹏今天上午在人民大会堂会见了美国客人。",
    "上海浦东开发与法制建设同步。",
    "新华社北京十二月三十一日电",
    "中国人民银行决定从明年一月一日起下调存贷款利率。",
    "张三去了上海，李四留在深圳。",
]
PARAGRAPH = "".join(SENTENCES)
LONG_TEXT = PARAGRAPH * 40  # about 3,000 characters, many chunks
TEXT_MIX = [*SENTENCES, PARAGRAPH, *SENTENCES, PARAGRAPH, LONG_TEXT]


@dataclass
class Sample:
    at: float  # seconds since the start of the load
    latency: float  # seconds
    status: int  # 0 when the request raised (connection error, timeout)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` and all its descendants, in MB (0 for processes that are gone)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def server_command(model: Path, port: int) -> tuple[list[str], dict[str, str]]:
    environment = {**os.environ, "NER_MODEL_PATH": str(model), "NER_TORCH_THREADS": "1"}
    return [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"], environment


async def sample_rss(pid: int | None, started: float, duration: float, into: list[tuple[float, float]]) -> None:
    while pid is not None and time.monotonic() - started < duration:
        into.append((time.monotonic() - started, rss_mb(pid)))
        await asyncio.sleep(1.0)


async def run_load(url: str, pid: int | None, duration: float, rate: float, concurrency: int) -> tuple[list[Sample], list[tuple[float, float]], int]:
    """Requests at `rate` per second for `duration` seconds; the samples, RSS samples and arrivals skipped."""
    samples: list[Sample] = []
    rss: list[tuple[float, float]] = []
    in_flight = asyncio.Semaphore(concurrency)
    skipped = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(text: str) -> None:
            sent = time.monotonic()
            try:
                response = await client.post("/tag", json={"text": text})
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            finally:
                in_flight.release()
            samples.append(Sample(sent - started, time.monotonic() - sent, status))

        started = time.monotonic()
        sampler = asyncio.create_task(sample_rss(pid, started, duration, rss))
        tasks = []
        for index in range(int(duration * rate)):
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            if in_flight.locked():  # all `concurrency` requests still out: the server is behind
                skipped += 1
                continue
            await in_flight.acquire()
            tasks.append(asyncio.create_task(one(TEXT_MIX[index % len(TEXT_MIX)])))
        await asyncio.gather(*tasks)
        await sampler
    return samples, rss, skipped


def summarise(samples: list[Sample], rss: list[tuple[float, float]], skipped: int, args: argparse.Namespace) -> dict:
    judged = [s for s in samples if s.at >= args.warmup]
    errors = [s for s in samples if s.status != 200]
    window_length = (args.duration - args.warmup) / args.windows
    windows = []
    for k in range(args.windows):
        start, end = args.warmup + k * window_length, args.warmup + (k + 1) * window_length
        latencies = [s.latency for s in judged if start <= s.at < end]
        rss_in_window = [value for at, value in rss if start <= at < end]
        windows.append(
            {
                "from_s": round(start, 1),
                "to_s": round(end, 1),
                "requests": len(latencies),
                "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                "rss_mb": round(percentile(rss_in_window, 0.5), 1) if rss_in_window else None,
            }
        )
    latencies = [s.latency for s in judged]
    window_p99 = [w["p99_ms"] for w in windows if w["requests"]]
    p99_ratio = max(window_p99) / min(window_p99) if window_p99 else float("nan")
    # Medians per window, not single samples: RSS swings with each long text's transient buffers.
    window_rss = [w["rss_mb"] for w in windows if w["rss_mb"] is not None]
    rss_start = window_rss[0] if window_rss else None
    rss_end = window_rss[-1] if window_rss else None
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start else None
    checks = {
        "zero_errors": not errors,
        "rss_growth_below_5_percent": growth is not None and growth < RSS_GROWTH_LIMIT_PERCENT,
        "p99_stable": p99_ratio <= args.p99_ratio,
    }
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "requests": len(samples),
        "errors": len(errors),
        "error_statuses": sorted({s.status for s in errors}),
        "skipped_arrivals": skipped,
        "achieved_rate_per_s": round(len(samples) / args.duration, 2),
        "latency_ms_after_warmup": {
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p95": round(percentile(latencies, 0.95) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(max(latencies) * 1000, 2) if latencies else None,
        },
        "p99_ratio_max_over_min_window": round(p99_ratio, 2),
        "rss_mb": {
            "first_window_median": rss_start,
            "last_window_median": rss_end,
            "peak": round(max(value for _, value in rss), 1) if rss else None,
            "growth_percent": round(growth, 2) if growth is not None else None,
        },
        "windows": windows,
        "checks": checks,
        "passed": all(checks.values()),
    }


def print_report(report: dict) -> None:
    latency, rss = report["latency_ms_after_warmup"], report["rss_mb"]
    print(f"soak: {report['requests']} requests at {report['achieved_rate_per_s']}/s, {report['errors']} errors, {report['skipped_arrivals']} arrivals skipped")
    print(f"latency after warm-up (ms): p50 {latency['p50']}  p95 {latency['p95']}  p99 {latency['p99']}  max {latency['max']}")
    print(f"RSS (MB, window medians): first {rss['first_window_median']}  last {rss['last_window_median']}  growth {rss['growth_percent']} %  (peak sample {rss['peak']})")
    print(f"{'window (s)':>14} {'requests':>9} {'p50 ms':>9} {'p99 ms':>9} {'RSS MB (median)':>16}")
    for w in report["windows"]:
        print(f"{w['from_s']:>6.0f}-{w['to_s']:<7.0f} {w['requests']:>9} {w['p50_ms']:>9} {w['p99_ms']:>9} {w['rss_mb'] or '-':>16}")
    print(f"p99 max/min over windows: {report['p99_ratio_max_over_min_window']}")
    print("checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in report["checks"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load in all, warm-up included (default 600)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds not judged at the start (default: 10%% of the duration, at least 10)")
    parser.add_argument("--rate", type=float, default=20, help="requests per second (default 20)")
    parser.add_argument("--concurrency", type=int, default=16, help="most requests in flight (default 16)")
    parser.add_argument("--windows", type=int, default=6, help="windows the judged time is cut into (default 6)")
    parser.add_argument("--p99-ratio", type=float, default=2.0, help="largest over smallest window p99 allowed (default 2)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle for the server this script starts")
    parser.add_argument("--url", help="an already running server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = max(10.0, args.duration / 10)
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")

    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
        else:
            log = (args.json.parent if args.json else Path(tempfile.mkdtemp(prefix="soak-"))) / "soak-server.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"starting a server with {args.model}; its log: {log}")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command, environment = server_command(args.model, port)
            pid = stack.enter_context(running(command, f"{url}/readyz", log, environment, ROOT)).pid
        samples, rss, skipped = asyncio.run(run_load(url, pid, args.duration, args.rate, args.concurrency))
    report = summarise(samples, rss, skipped, args)
    report["settings"]["model"] = str(args.model) if not args.url else None
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
