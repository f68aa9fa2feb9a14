"""Where the time goes: the in-process pipeline stage by stage, and HTTP beside the framework's own limit.

    python -m bench.stages [--precision int8] [--batch-size 128] [--rounds 2] [--http] [--out bench/results/stages.json]
    python -m bench.stages --device cuda --precision fp32 --batch-size 2048 --out bench/results/gpu/stages.json

In-process (msra-test, one torch thread, batches of `--batch-size` chunks sorted by length as
`Tagger.tag` forms them): `Tagger.prepare` (atoms, chunks), `Featuriser.batch` (ids,
dictionary features, padding), the network with Viterbi (`Tagger.label_ids`), label ids to
spans (`Tagger.chunk_spans`) and `Tagger.assemble` (offsets, tokens, entities).
"everything but the network" is the sum of the other stages, in characters per second.
On CUDA the network stage waits for the GPU to finish (torch.cuda.synchronize); copying
the label ids back to the CPU counts in the decode stage.

With `--http`: wrk at 64 connections, one sentence per request, against `ner-serve` (one
worker, int8 on the CPU; with `--device cuda`, fp32 on the GPU) and against a bare FastAPI
endpoint on uvicorn that returns a fixed body of the same size as `ner-serve`'s answer
(bench/bare_app.py): the framework's own limit, so that the service's HTTP overhead reads as
a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.http_load import gauge, load, server
from bench.processes import free_port, running, thread_cpu_seconds
from bench.throughput import cpu_name
from model.artifact import PRECISIONS
from model.tagger import TASKS, Tagger
from training.corpora import load_corpus

DEFAULT_OUT = Path("bench/results/stages.json")
STAGES = ("prepare", "featurise", "network", "decode", "assemble")


def time_stages(tagger: Tagger, texts: list[str], batch_size: int) -> dict[str, float]:
    """Seconds per stage for tagging `texts` once."""
    seconds = dict.fromkeys(STAGES, 0.0)
    started = time.perf_counter()
    prepared = [tagger.prepare(text) for text in texts]
    seconds["prepare"] = time.perf_counter() - started
    flat = sorted(((i, k) for i, p in enumerate(prepared) for k in range(len(p.chunks))), key=lambda ik: len(prepared[ik[0]].chunks[ik[1]]))
    spans = {}
    for offset in range(0, len(flat), batch_size):
        keys = flat[offset : offset + batch_size]
        chunks = [prepared[i].chunks[k] for i, k in keys]
        started = time.perf_counter()
        with torch.inference_mode():  # as Tagger.infer runs it
            batch = tagger.featuriser.batch([chunk.model_text for chunk in chunks])
        featurised = time.perf_counter()
        ids = tagger.label_ids(batch, chunks, TASKS)
        if tagger.device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: the network's time, not decode's
        networked = time.perf_counter()
        spans.update(zip(keys, tagger.chunk_spans(ids, chunks)))
        seconds["featurise"] += featurised - started
        seconds["network"] += networked - featurised
        seconds["decode"] += time.perf_counter() - networked
    started = time.perf_counter()
    for i, p in enumerate(prepared):
        tagger.assemble(p, [spans[(i, k)] for k in range(len(p.chunks))], TASKS)
    seconds["assemble"] = time.perf_counter() - started
    return seconds


BATCH_TOTALS = ("ner_batch_size_sentences_sum", "ner_batch_size_sentences_count", "ner_inference_seconds_sum")


@contextmanager
def where_the_cpu_goes(pid: int, url: str) -> Iterator[dict]:
    """While the block runs a load point against a one-worker server: CPU seconds of the
    worker's event loop (its main thread), of its other threads (the inference thread, mostly)
    and of the load generator (the children reaped meanwhile: wrk), and the batches formed."""
    threads, children = thread_cpu_seconds(pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    totals = [gauge(url, name) for name in BATCH_TOTALS]
    split: dict = {}
    yield split
    after = thread_cpu_seconds(pid)
    used = {tid: seconds - threads.get(tid, 0.0) for tid, seconds in after.items()}
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    sentences, batches, inference = (gauge(url, name) - before for name, before in zip(BATCH_TOTALS, totals))
    split["cpu_seconds"] = {
        "event loop": used.pop(pid, 0.0),
        "other threads": sum(used.values()),
        "load generator": reaped.ru_utime + reaped.ru_stime - children.ru_utime - children.ru_stime,
    }
    split["mean_batch_sentences"] = sentences / batches if batches else 0.0
    split["inference_seconds"] = inference


def http_ratio(model: str, duration: float, workdir: Path, limit: int = 0, device: str = "cpu", rounds: int = 2) -> dict:
    """Requests/s of ner-serve (int8 on the CPU, fp32 on CUDA) and of the bare endpoint, wrk
    c=64, one sentence per request, `rounds` of each in turns (the VM's speed drifts)."""
    sentences = [example.text for example in load_corpus("msra-test")][: limit or None]
    bodies = workdir / "bodies-1.jsonl"
    bodies.write_text("\n".join(json.dumps({"texts": [s]}, ensure_ascii=False) for s in sentences) + "\n", encoding="utf-8")
    characters = sum(len(s) for s in sentences) / len(sentences)
    tagger = Tagger.load(model, "cpu", precision="int8")
    typical = min(sentences, key=lambda s: abs(len(s) - characters))  # an answer of the mean size
    answer = json.dumps({"model": {"name": tagger.name, "version": tagger.version}, "results": [r.to_dict() for r in tagger.tag([typical])]}, ensure_ascii=False)
    del tagger
    (workdir / "answer.json").write_text(answer, encoding="utf-8")
    results = {}
    port = free_port()
    bare_env = {**os.environ, "BARE_ANSWER": str(workdir / "answer.json")}
    bare = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    for name in [f"{kind} {k + 1}" for k in range(rounds) for kind in ("bare", "ner-serve")]:
        if name.startswith("bare"):
            with running(bare, f"http://127.0.0.1:{port}/healthz", workdir / "bare.log", bare_env):
                load(f"http://127.0.0.1:{port}", bodies, 4, 2.0, 1, characters)  # warm-up
                point = load(f"http://127.0.0.1:{port}", bodies, 64, duration, 1, characters)
        else:
            with server(model, {"NER_DEVICE": device, "NER_PRECISION": "int8"}, workdir / "server.log") as (process, url):
                load(url, bodies, 4, 2.0, 1, characters)
                with where_the_cpu_goes(process.pid, url) as split:
                    point = load(url, bodies, 64, duration, 1, characters)
                point.update(split)
        point["requests_per_second"] = point["sentences_per_second"]
        results.setdefault(name.split()[0], []).append(point)
        print(f"{name:12s} c=64: {point['requests_per_second']:8.0f} requests/s, p50 {point['p50_ms']:.1f} ms, errors {point['errors']}", file=sys.stderr)
        if "cpu_seconds" in point:
            cpu = ", ".join(f"{part} {seconds:.1f}" for part, seconds in point["cpu_seconds"].items())
            print(f"{'':12s} CPU seconds in {point['seconds']:.1f} s: {cpu}; batches of {point['mean_batch_sentences']:.1f} sentences", file=sys.stderr)
    best = {name: max(p["requests_per_second"] for p in points) for name, points in results.items()}
    return {"answer_bytes": len(answer.encode()), "rounds": results, "best_requests_per_second": best, "ner_serve_over_bare": best["ner-serve"] / best["bare"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the network runs; the other stages run on one CPU thread")
    parser.add_argument("--precision", default="int8", choices=list(PRECISIONS), help="int8 is CPU-only; fp16 is meant for CUDA")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=0, help="the first N sentences (0 = all 5,000)")
    parser.add_argument("--rounds", type=int, default=2, help="the pipeline this many times; each stage's best round counts")
    parser.add_argument("--http", action="store_true", help="also ner-serve against the bare framework over HTTP (needs wrk)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP point")
    parser.add_argument("--http-rounds", type=int, default=2, help="HTTP points per server, the servers in turns")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    texts = [example.text for example in load_corpus("msra-test")][: args.limit or None]
    characters = sum(len(text) for text in texts)
    tagger = Tagger.load(args.model, args.device, precision=args.precision)
    tagger.tag(texts[:200])  # warm-up
    rounds = [time_stages(tagger, texts, args.batch_size) for _ in range(args.rounds)]
    best = {stage: min(r[stage] for r in rounds) for stage in STAGES}
    outside = sum(seconds for stage, seconds in best.items() if stage != "network")
    for stage in STAGES:
        print(f"{stage:14s} {best[stage]:7.3f} s  ({characters / best[stage]:12,.0f} chars/s)")
    print(f"{'all but network':14s} {outside:7.3f} s  ({characters / outside:12,.0f} chars/s)")
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "precision": tagger.precision,
        "batch_size": args.batch_size,
        "texts": len(texts),
        "characters": characters,
        "rounds": rounds,
        "best_seconds": best,
        "all_but_network_chars_per_s": characters / outside,
        "whole_pipeline_chars_per_s": characters / sum(best.values()),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.http:
        with tempfile.TemporaryDirectory(prefix="bench-stages-") as folder:
            result["http"] = http_ratio(args.model, args.duration, Path(folder), args.limit, args.device, args.http_rounds)
        print(f"ner-serve ÷ bare framework, requests/s at c=64: {result['http']['ner_serve_over_bare']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
