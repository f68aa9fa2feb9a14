"""Property tests of `Tagger.tag` on arbitrary Unicode (issue 6, part 2).

For any texts and any task subset: no exception, one result per text, tokens that
tile the text in order with exact offsets, entities inside the text and apart, no
token boundary inside a grapheme (combining marks, ZWJ sequences, emoji modifiers),
and the same answer twice.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.tagger import TASKS, Tagger, TagResult
from tests.test_bad_input import bundle_under_test
from training.corpora import load_corpus

ZWJ = "\u200d"
CJK = "".join(chr(code) for code in range(0x4E00, 0x4E00 + 400))  # common ideographs
PUNCTUATION = "。，、！？；：…「」《》（）.,!?;: \n\t\u3000"
MARKS = "\u0301\u0323\u20dd\ufe0f\ufe0e\U0001f3fd" + ZWJ

# Mostly Chinese with punctuation and marks, and any code point at all (lone surrogates too).
characters = st.one_of(
    st.sampled_from(CJK),
    st.sampled_from(PUNCTUATION),
    st.sampled_from(MARKS),
    st.characters(codec=None, exclude_categories=()),
)
texts = st.text(characters, max_size=400)
task_subsets = st.lists(st.sampled_from(TASKS), min_size=1, max_size=3, unique=True)


@pytest.fixture(scope="module")
def tagger(request: pytest.FixtureRequest) -> Tagger:
    return Tagger.load(bundle_under_test(request), "cpu")


def attached(char: str) -> bool:
    """Belongs to the grapheme before it (model/text.py's promise, written out independently)."""
    return unicodedata.category(char) in ("Mn", "Mc", "Me") or char in ("\ufe0e", "\ufe0f", ZWJ) or 0x1F3FB <= ord(char) <= 0x1F3FF


def check_covering(result: TagResult, text: str, tasks: tuple[str, ...]) -> None:
    assert result.text == text
    if "seg" in tasks or "pos" in tasks:
        position = 0
        for token in result.tokens:
            assert token.start == position and token.end > token.start, token
            assert text[token.start : token.end] == token.text
            assert (token.pos is not None) == ("pos" in tasks)
            if token.text.isspace() and token.pos is not None:
                assert token.pos == "w", "whitespace runs are tokens with pos 'w'"
            position = token.end
        assert position == len(text), "tokens must cover the whole text"
        for before, after in zip(result.tokens, result.tokens[1:]):
            assert not (before.text.isspace() and after.text.isspace()), "a whitespace run is one token"
            boundary = after.start
            assert text[boundary - 1] != ZWJ, f"boundary after a ZWJ at {boundary} in {text!r}"
            if not text[boundary - 1].isspace():
                assert not attached(text[boundary]), f"boundary before an attached mark at {boundary} in {text!r}"
    else:
        assert result.tokens == []
    previous_end = 0
    for entity in result.entities:
        assert 0 <= entity.start < entity.end <= len(text)
        assert text[entity.start : entity.end] == entity.text
        assert entity.type in ("PER", "LOC", "ORG")
        assert entity.start >= previous_end, "entities overlap or are out of order"
        previous_end = entity.end
    if "ner" not in tasks:
        assert result.entities == []


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(texts, min_size=1, max_size=4), tasks=task_subsets)
def test_any_texts_are_tagged_with_valid_covering_offsets(tagger: Tagger, batch: list[str], tasks: list[str]) -> None:
    results = tagger.tag(batch, tasks)
    assert len(results) == len(batch)
    for text, result in zip(batch, results):
        check_covering(result, text, tuple(tasks))


@settings(max_examples=100, deadline=None)
@given(text=texts)
def test_tagging_is_deterministic(tagger: Tagger, text: str) -> None:
    assert tagger.tag([text]) == tagger.tag([text])


@settings(max_examples=20, deadline=None)
@given(text=st.text(st.sampled_from(CJK), min_size=500, max_size=2000))
def test_long_texts_without_punctuation_are_chunked_and_covered(tagger: Tagger, text: str) -> None:
    """Longer than the model's window (max_len) and no place to cut but the limit."""
    [result] = tagger.tag([text], ("seg",))
    check_covering(result, text, ("seg",))


# -- the same text, the same answer, in any batch (issue 20) -----------------------------------

BATCH_POOL = [example.text for example in load_corpus("msra-test")[:300]]


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (never in CI)")


@pytest.fixture(
    scope="module",
    params=[("cpu", "fp32"), ("cpu", "int8"), pytest.param(("cuda", "fp32"), marks=ON_CUDA), pytest.param(("cuda", "fp16"), marks=ON_CUDA)],
    ids=lambda device_precision: "-".join(device_precision),
)
def shipped_tagger(request: pytest.FixtureRequest, shipped_bundle: Path) -> tuple[Tagger, dict[int, TagResult]]:
    """The shipped model on each device and precision the service offers there, with a cache
    of each pool sentence tagged alone."""
    device, precision = request.param
    return Tagger.load(shipped_bundle, device, precision=precision), {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picked=st.lists(st.integers(0, len(BATCH_POOL) - 1), min_size=1, max_size=96), batch_size=st.integers(1, 96))
def test_a_sentence_gets_the_same_tags_in_any_batch(shipped_tagger: tuple[Tagger, dict[int, TagResult]], picked: list[int], batch_size: int) -> None:
    """Any subset of real sentences, in any order and batch size (so with any neighbours and
    padding), gets exactly the answer each sentence gets alone. int8 failed this before its
    activation ranges were pinned (model/int8.py)."""
    tagger, alone = shipped_tagger
    for index in picked:
        if index not in alone:
            [alone[index]] = tagger.tag([BATCH_POOL[index]])
    for start in range(0, len(picked), batch_size):
        indices = picked[start : start + batch_size]
        results = tagger.tag([BATCH_POOL[index] for index in indices])
        for index, result in zip(indices, results):
            assert result == alone[index], f"{tagger.device.type} {tagger.precision}: sentence {index} tagged differently beside {len(indices) - 1} others"
