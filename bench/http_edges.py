"""The HTTP edge under misbehaving clients, with default settings: figures for RELIABILITY.md.

    python -m bench.http_edges [--model model/artifacts/default] [--out bench/results/http_edges.json]

1. Endless headers: how many bytes one connection may send as a never-ending header before
   the server cuts it off, and /healthz latency without them and while 8 clients send such
   headers as fast as they can (reconnecting each time they are cut off).
2. Connections that never finish a request (5 idle, 5 half a request line, 5 half the
   headers, 5 half a body): when the server closes each.
3. Two workers, SIGTERM during a long request: what happens to a request sent 0.5 s later,
   and whether the long one completes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import select
import signal
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.http_load import server

CHUNK = 65536
HALF_REQUESTS = {
    "idle": b"",
    "half a request line": b"POST /t",
    "half the headers": b"POST /tag HTTP/1.1\r\nHost: x\r\nContent-Type: appl",
    "half a body": b'POST /tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"text": "',
}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def endless_header(port: int, stop: Any = None, limit: int = 64 * 1024 * 1024) -> tuple[int, bytes]:
    """Bytes sent as one header until the server answered or closed, and its answer. A small
    send buffer and a look for the answer after every chunk keep the count close to what the
    server read (the kernel would otherwise take megabytes on the server's behalf)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        reply = b""
        try:
            while sent < limit and not (stop and stop.is_set()):
                if select.select([connection], [], [], 0)[0]:
                    break  # the server answered or closed
                connection.sendall(b"a" * CHUNK)
                sent += CHUNK
            reply = connection.recv(4096)
        except OSError:
            pass
    return sent, reply


def healthz_ms(url: str, probes: int = 50) -> dict:
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:  # one client: httpx.get builds an SSL context each time (tens of ms)
        for _ in range(probes):
            started = time.perf_counter()
            client.get("/healthz")
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    return {"p50": round(statistics.median(latencies), 1), "max": round(max(latencies), 1), "probes": probes}


def attack(port: int, connections: int, stop: Any) -> None:
    """`connections` threads, each sending endless headers, reconnecting when cut off."""

    def one() -> None:
        while not stop.is_set():
            try:
                endless_header(port, stop)
            except OSError:
                pass

    threads = [threading.Thread(target=one, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure_headers(url: str) -> dict:
    quiet = healthz_ms(url)
    sent, reply = endless_header(port_of(url))
    # The attackers run in a process of their own: in this one, their threads would hold the
    # GIL that the probe needs, and the probe would time the client, not the server.
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    attacker = context.Process(target=attack, args=(port_of(url), 8, stop))
    attacker.start()
    time.sleep(1)
    attacked = healthz_ms(url)
    stop.set()
    attacker.join(timeout=60)
    return {
        "one_connection_bytes_sent_before_cut_off": sent,
        "one_connection_answer": reply.split(b"\r\n", 1)[0].decode(errors="replace") or "connection closed (reset)",
        "healthz_ms_alone": quiet,
        "healthz_ms_with_8_endless_headers": attacked,
    }


def measure_half_requests(url: str, per_kind: int = 5) -> dict:
    started = time.monotonic()
    connections = []
    for kind, sent in HALF_REQUESTS.items():
        for _ in range(per_kind):
            connection = socket.create_connection(("127.0.0.1", port_of(url)), timeout=120)
            connection.sendall(sent)
            connections.append((kind, connection))
    closed: dict[str, list[float]] = {kind: [] for kind in HALF_REQUESTS}

    def wait_closed(kind: str, connection: socket.socket) -> None:
        try:
            while connection.recv(4096):
                pass
            closed[kind].append(round(time.monotonic() - started, 1))
        except OSError:
            closed[kind].append(round(time.monotonic() - started, 1))
        finally:
            connection.close()

    waiters = [threading.Thread(target=wait_closed, args=pair) for pair in connections]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    return {"connections": len(connections), "closed_after_s": closed, "all_closed_within_s": max(max(times) for times in closed.values())}


def measure_drain(model: str, log: Path) -> dict:
    blocker = {"texts": ["的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子" * 2000] * 6}
    with server(model, {}, log, workers=2) as (process, url):
        answers: list = []
        in_flight = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/tag", json=blocker, timeout=300).status_code))
        in_flight.start()
        time.sleep(1.0)  # the request is read and queued
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        try:
            outcome = f"answered {httpx.post(f'{url}/tag', json={'text': '张三去了上海。'}, timeout=60).status_code}"
        except httpx.ConnectError:
            outcome = "refused"
        except httpx.TransportError as problem:
            outcome = f"failed ({type(problem).__name__}: {problem})"
        late_s = round(time.monotonic() - started, 3)
        in_flight.join()
        exit_status = process.wait(timeout=120)
    return {"late_request": outcome, "late_request_s": late_s, "in_flight_status": answers[0] if answers else None, "exit_status": exit_status}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.http_edges", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--out", type=Path, default=Path("bench/results/http_edges.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        with server(args.model, {}, Path(folder) / "one.log") as (_, url):
            figures = {"headers": measure_headers(url)}
            print(json.dumps(figures["headers"]), flush=True)
            figures["half_requests"] = measure_half_requests(url)
            print(json.dumps(figures["half_requests"]), flush=True)
        figures["drain_2_workers"] = measure_drain(args.model, Path(folder) / "two.log")
        print(json.dumps(figures["drain_2_workers"]), flush=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
