"""Metric definitions of the evaluation protocol (DESIGN.md), in one place.

- NER: exact (start, end, type) spans; P/R/F1 overall and per type.
- Segmentation: (start, end) word spans; P/R/F1 and recall of out-of-vocabulary words.
- POS: (start, end, tag) spans, joint with segmentation.
Whitespace tokens are not words and are ignored on both sides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from model.schemes import Span


def prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold": gold, "predicted": predicted, "correct": correct}


def span_scores(gold: Iterable[set[Span]], predicted: Iterable[set[Span]], by_type: bool = False) -> dict:
    """P/R/F1 of exact span matches summed over sentences; per type too if `by_type`."""
    counts: Counter = Counter()
    for gold_spans, predicted_spans in zip(gold, predicted):
        correct = gold_spans & predicted_spans
        counts["gold"] += len(gold_spans)
        counts["predicted"] += len(predicted_spans)
        counts["correct"] += len(correct)
        if by_type:
            for name, spans in (("gold", gold_spans), ("predicted", predicted_spans), ("correct", correct)):
                for span in spans:
                    counts[(span[2], name)] += 1
    result = prf(counts["correct"], counts["predicted"], counts["gold"])
    if by_type:
        kinds = sorted({key[0] for key in counts if isinstance(key, tuple)})
        result["by_type"] = {kind: prf(counts[(kind, "correct")], counts[(kind, "predicted")], counts[(kind, "gold")]) for kind in kinds}
    return result


def oov_recall(texts: list[str], gold: list[set[Span]], predicted: list[set[Span]], vocabulary: set[str]) -> float:
    """Recall of gold words whose text is not in `vocabulary` (the training words)."""
    found = total = 0
    for text, gold_spans, predicted_spans in zip(texts, gold, predicted):
        for span in gold_spans:
            if text[span[0] : span[1]] not in vocabulary:
                total += 1
                found += span in predicted_spans
    return found / total if total else 0.0


def untyped(spans: Iterable[Span]) -> set[Span]:
    return {(start, end, None) for start, end, _ in spans}
