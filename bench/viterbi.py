"""Viterbi decoders on one device: the loop over time against the parallel scan, in the whole tagger.

    python -m bench.viterbi --device cuda [--batch-sizes 128,512,2048] [--rounds 2]   # also a step of bench/gpu.sh

model/crf.py decodes CUDA tensors with `scan_viterbi` (O(log T) operations on the whole
batch) and CPU tensors with `sequential_viterbi` (a few small operations per time step, each a
kernel launch on a GPU). This times the whole tagger (seg+pos+ner, fp32, msra-test) with the
bundle's network as shipped and with a copy scripted to decode with the loop on every device,
rounds interleaved (each one's best round counts), after checking that both give the same answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import model.network
from bench.throughput import cpu_name
from model.artifact import eager_copy, load_bundle
from model.crf import sequential_viterbi
from model.scripting import owned_by_torchscript
from model.tagger import Tagger
from training.corpora import load_corpus


def with_loop_decoder(tagger: Tagger, bundle: str, device: str) -> Tagger:
    """`tagger` with its network scripted again from the current code, decoding with the loop."""
    scan_choice = model.network.viterbi
    model.network.viterbi = sequential_viterbi  # what TorchScript compiles into decode_seg_and_ner
    shipped_network, metadata = load_bundle(bundle, device)
    try:
        network = owned_by_torchscript(torch.jit.script(eager_copy(shipped_network, metadata).to(device)), device)
    finally:
        model.network.viterbi = scan_choice
    loop = Tagger(network, metadata, device, tagger.lexicon)
    loop.featuriser.build_tables()
    return loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--batch-sizes", default="128,512,2048", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="the first N sentences (0 = all 5,000)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu/viterbi.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sentences = [e.text for e in load_corpus("msra-test")]
    sentences = sentences[: args.limit] if args.limit else sentences
    characters = sum(len(s) for s in sentences)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]

    shipped = Tagger.load(args.model, args.device)
    decoders = {"scan (shipped choice on CUDA)" if args.device == "cuda" else "loop (shipped choice on the CPU)": shipped}
    decoders["loop on every device"] = with_loop_decoder(shipped, args.model, args.device)
    answers = {name: [r.to_dict() for r in tagger.tag(sentences, batch_size=max(batch_sizes))] for name, tagger in decoders.items()}
    differing = sum(a != b for a, b in zip(*answers.values()))
    best: dict[str, dict[int, float]] = {name: {} for name in decoders}
    for round_number in range(1, args.rounds + 1):
        for batch_size in batch_sizes:
            for name, tagger in decoders.items():
                if args.device == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                tagger.tag(sentences, batch_size=batch_size)
                rate = characters / (time.perf_counter() - started)
                best[name][batch_size] = max(rate, best[name].get(batch_size, 0.0))
                print(f"round {round_number}: {name} @{batch_size}: {rate:,.0f} chars/s", file=sys.stderr)
    report = {
        "corpus": "msra-test",
        "sentences": len(sentences),
        "characters": characters,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({cpu_name()})",
        "torch": torch.__version__,
        "precision": "fp32",
        "sentences_with_different_answers": differing,
        "chars_per_second": {name: {str(size): rate for size, rate in rates.items()} for name, rates in best.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
