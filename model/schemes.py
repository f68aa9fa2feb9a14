"""BMES tagging: encoding spans as tags, decoding tags to spans, allowed transitions.

Labels are "B", "M", "E", "S" for plain segmentation and "B-PER", "S-LOC", ... for
typed tasks, plus "O" (outside any span) for NER.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

PREFIXES = ("B", "M", "E", "S")
OUTSIDE = "O"

Span = tuple[int, int, "str | None"]


def make_labels(types: list[str] | None, outside: bool) -> list[str]:
    """The label list of a head: BMES, or BMES x types, with "O" first if `outside`."""
    labels = [OUTSIDE] if outside else []
    if types is None:
        return labels + list(PREFIXES)
    return labels + [f"{p}-{t}" for t in types for p in PREFIXES]


@lru_cache(maxsize=1024)  # a few hundred labels, split once per character decoded
def split_label(label: str) -> tuple[str, str | None]:
    """"B-PER" -> ("B", "PER"); "B" -> ("B", None); "O" -> ("O", None)."""
    prefix, _, kind = label.partition("-")
    return prefix, (kind or None)


def encode(spans: list[Span], length: int) -> list[str]:
    """Tags for a sequence of `length` positions; positions outside any span get "O"."""
    tags = [OUTSIDE] * length
    for start, end, kind in spans:
        suffix = f"-{kind}" if kind else ""
        if end - start == 1:
            tags[start] = "S" + suffix
        else:
            tags[start] = "B" + suffix
            for k in range(start + 1, end - 1):
                tags[k] = "M" + suffix
            tags[end - 1] = "E" + suffix
    return tags


def decode(tags: list[str]) -> list[Span]:
    """Spans (start, end, type) from BMES tags (or BIO: I reads as M); tolerant of invalid
    sequences.

    An unfinished span is closed where the next one begins or at "O"; a stray M or E
    starts a span of its own, so no tagged position is ever lost.
    """
    spans: list[Span] = []
    start: int | None = None
    kind: str | None = None
    for i, tag in enumerate(tags):
        prefix, tag_kind = split_label(tag)
        if prefix == "I":
            prefix = "M"
        if start is not None and (prefix in ("B", "S", OUTSIDE) or tag_kind != kind):
            spans.append((start, i, kind))
            start = None
        if prefix == OUTSIDE:
            continue
        if start is None:
            start, kind = i, tag_kind
        if prefix in ("E", "S"):
            spans.append((start, i + 1, kind))
            start = None
    if start is not None:
        spans.append((start, len(tags), kind))
    return spans


# Prefix codes for `SpanDecoder`; I (BIO) reads as M, as in `decode`.
_B, _M, _E, _S, _O = range(5)
_PREFIX_CODE = {"B": _B, "M": _M, "I": _M, "E": _E, "S": _S, OUTSIDE: _O}


class SpanDecoder:
    """`decode` over a head's label ids for a whole batch at once: numpy over the ids, no
    per-character Python; the same spans as `decode` on the label strings, invalid
    sequences included (tests/test_schemes.py checks this).

    Read position by position, `decode` keeps a span open after a B or M only; a position
    continues that span if it is M or E of the same type; any other labelled position starts
    a span. A span ends after an E or S, before a position that does not continue it, or at
    the end of the sequence.
    """

    def __init__(self, labels: Sequence[str]):
        parts = [split_label(label) for label in labels]
        kinds = list(dict.fromkeys(kind for _, kind in parts))
        self._kind_names = np.array(kinds, dtype=object)
        self._prefix = np.array([_PREFIX_CODE[prefix] for prefix, _ in parts], dtype=np.int8)
        self._kind = np.array([kinds.index(kind) for _, kind in parts], dtype=np.int32)

    def decode(self, ids: np.ndarray, lengths: Sequence[int]) -> list[list[Span]]:
        """Spans of each row of the (rows, steps) label ids, the first `lengths[row]` of them."""
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = ids[np.arange(ids.shape[1]) < lengths[:, None]]  # the rows' labels end to end
        prefix, kind = self._prefix[flat], self._kind[flat]
        firsts, lasts = offsets[:-1][lengths > 0], offsets[1:][lengths > 0] - 1
        open_before = np.zeros(len(flat), dtype=bool)
        open_before[1:] = prefix[:-1] <= _M
        open_before[firsts] = False  # rows do not run into each other
        same_kind = np.zeros(len(flat), dtype=bool)
        same_kind[1:] = kind[1:] == kind[:-1]
        continues = open_before & ((prefix == _M) | (prefix == _E)) & same_kind
        starts = np.flatnonzero((prefix != _O) & ~continues)
        ends = np.sort(
            np.concatenate(
                [
                    np.flatnonzero(open_before & ~continues),  # closed before this position
                    np.flatnonzero((prefix == _E) | (prefix == _S)) + 1,
                    lasts[prefix[lasts] <= _M] + 1,  # still open at the end of its row
                ]
            )
        )
        row = np.searchsorted(offsets, starts, side="right") - 1
        spans = list(zip((starts - offsets[row]).tolist(), (ends - offsets[row]).tolist(), self._kind_names[kind[starts]].tolist()))
        bounds = np.cumsum(np.bincount(row, minlength=len(lengths))).tolist()
        return [spans[begin:end] for begin, end in zip([0, *bounds[:-1]], bounds)]


def allowed_transitions(labels: list[str]) -> tuple[list[bool], list[list[bool]], list[bool]]:
    """Which labels may start a sequence, follow each label, and end a sequence."""

    def may_start(label: str) -> bool:
        return split_label(label)[0] in ("B", "S", OUTSIDE)

    def may_end(label: str) -> bool:
        return split_label(label)[0] in ("E", "S", OUTSIDE)

    def may_follow(previous: str, current: str) -> bool:
        prev_prefix, prev_kind = split_label(previous)
        cur_prefix, cur_kind = split_label(current)
        if prev_prefix in ("B", "M"):
            return cur_prefix in ("M", "E") and cur_kind == prev_kind
        return cur_prefix in ("B", "S", OUTSIDE)

    start = [may_start(label) for label in labels]
    transitions = [[may_follow(a, b) for b in labels] for a in labels]
    end = [may_end(label) for label in labels]
    return start, transitions, end


def is_valid(tags: list[str]) -> bool:
    """True if `tags` is a sequence that `allowed_transitions` admits."""
    if not tags:
        return True
    labels = sorted(set(tags))
    index = {label: k for k, label in enumerate(labels)}
    start, transitions, end = allowed_transitions(labels)
    if not start[index[tags[0]]] or not end[index[tags[-1]]]:
        return False
    return all(transitions[index[a]][index[b]] for a, b in zip(tags, tags[1:]))
