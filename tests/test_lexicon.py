"""Dictionary features: the vectorised matcher against a direct reading of the definition."""

from __future__ import annotations

import math

import jieba
import jieba.posseg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import Featuriser
from model.lexicon import ENTITY_TAGS, LENGTH_BUCKETS, N_FEATURES, N_PLAIN, SEPARATOR, Lexicon, WordMatches, joined_spans, word_cells
from model.vocab import Vocab, bigrams, code_points


def dictionary_features(lexicon: Lexicon, model_texts: list[str], word_vocab: Vocab | None = None) -> tuple[list[np.ndarray], list[WordMatches] | None]:
    """Each text's dictionary features and, given a word vocabulary, its SoftLexicon word sets,
    from one pass over the texts joined as the featuriser joins them."""
    out, position, role, entry = word_cells(code_points(SEPARATOR.join(model_texts)), *lexicon.tensors())
    starts, ends = joined_spans(model_texts)
    features = [out.numpy()[a:b] for a, b in zip(starts, ends)]
    return features, None if word_vocab is None else lexicon.word_matches(position, role, entry, word_vocab, model_texts)

# Dictionary words of every length bucket and entity kind, pieces that form other words
# when joined (北京 + 大学生), Latin/number placeholders, and strings jieba never holds.
PIECES = [
    "北京", "北京大学", "大学生", "中华人民共和国", "上海市", "国务院", "总理", "李鹏", "新华社",
    "长江", "人民", "的", "在", "了", "中", "国", "氪", "\ue000", "\ue001", " ", "\0", "\ud800", "😀",
]
texts_of_pieces = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon(jieba.posseg.POSTokenizer(jieba.Tokenizer()))


def reference_features(lexicon: Lexicon, text: str) -> np.ndarray:
    """Every substring that is a dictionary word, with its role at each character it covers."""
    freq, tags = lexicon.tokenizer.FREQ, lexicon.pos_tokenizer.word_tag_tab
    log_max = math.log1p(max(freq.values()))
    out = np.zeros((len(text), N_FEATURES), dtype=np.float32)
    for start in range(len(text)):
        for end in range(start + 1, len(text) + 1):
            word = text[start:end]
            if not freq.get(word):
                continue
            weight = np.float32(min(1.0, math.log1p(freq[word]) / log_max))
            kind = ENTITY_TAGS.get(tags.get(word, ""))
            if end - start == 1:
                cells = [(start, N_PLAIN - 1, 3)]
            else:
                bucket = min(end - start, 5) - 2
                roles = [0] + [1] * (end - start - 2) + [2]
                cells = [(start + k, role * LENGTH_BUCKETS + bucket, role) for k, role in enumerate(roles)]
            for position, column, role in cells:
                out[position, column] = max(out[position, column], weight)
                if kind is not None:
                    typed = N_PLAIN + kind * 4 + role
                    out[position, typed] = max(out[position, typed], weight)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(texts_of_pieces, min_size=1, max_size=5))
def test_features_match_the_definition(lexicon: Lexicon, texts: list[str]) -> None:
    together = dictionary_features(lexicon, texts)[0]
    for text, features in zip(texts, together):
        np.testing.assert_allclose(features, reference_features(lexicon, text), atol=1e-6)
        np.testing.assert_array_equal(features, dictionary_features(lexicon, [text])[0][0])


def reference_word_sets(lexicon: Lexicon, text: str) -> dict[tuple[int, int], dict[str, float]]:
    """SoftLexicon's sets: (position, role) -> {word: weight}, weights scaled to sum to 4 per position."""
    freq = lexicon.tokenizer.FREQ
    log_max = math.log1p(max(freq.values()))
    sets: dict[tuple[int, int], dict[str, float]] = {}
    for start in range(len(text)):
        for end in range(start + 1, len(text) + 1):
            word = text[start:end]
            if "\0" not in word and freq.get(word):  # the batch separator is never part of a word
                weight = min(1.0, math.log1p(freq[word]) / log_max)
                roles = [3] if end - start == 1 else [0] + [1] * (end - start - 2) + [2]
                for k, role in enumerate(roles):
                    sets.setdefault((start + k, role), {})[word] = weight
    for position in range(len(text)):
        total = sum(w for (p, _), words in sets.items() if p == position for w in words.values())
        for (p, role), words in sets.items():
            if p == position:
                sets[(p, role)] = {word: 4 * w / total for word, w in words.items()}
    return sets


@settings(max_examples=100, deadline=None)
@given(st.lists(texts_of_pieces, min_size=1, max_size=5))
def test_word_sets_match_the_definition(lexicon: Lexicon, texts: list[str]) -> None:
    """The SoftLexicon inputs: every dictionary word in each B/M/E/S set, its SoftLexicon
    weight, and the same sets after padding a batch."""
    vocab = Vocab(["北京", "北京大学", "中华人民共和国", "人民", "的"])  # other words are <unk>
    _, matches = dictionary_features(lexicon, texts, vocab)
    for text, found in zip(texts, matches):
        expected = reference_word_sets(lexicon, text)
        got: dict[tuple[int, int], dict[int, float]] = {}
        for position, role, word, weight in zip(found.position, found.role, found.word, found.weight):
            got.setdefault((int(position), int(role)), {}).setdefault(int(word), 0.0)
            got[(int(position), int(role))][int(word)] += float(weight)
        assert set(got) == set(expected)
        for cell, words in expected.items():
            by_id: dict[int, float] = {}
            for word, weight in words.items():
                by_id[vocab.id(word)] = by_id.get(vocab.id(word), 0.0) + weight
            assert got[cell] == pytest.approx(by_id, rel=1e-5)
    filled = [(text, found) for text, found in zip(texts, matches) if text]
    if filled:
        batch = Featuriser(Vocab([]), Vocab([]), lexicon, vocab).batch([text for text, _ in filled])
        for row, (_, found) in enumerate(filled):
            for position, role, word, weight in zip(found.position, found.role, found.word, found.weight):
                slots = list(zip(batch.words[row, position, role].tolist(), batch.word_weights[row, position, role].tolist()))
                assert any(w == word and v == pytest.approx(float(weight)) for w, v in slots)
            assert float(batch.word_weights[row].sum()) == pytest.approx(float(found.weight.sum()), rel=1e-5)


def test_known_words_have_their_roles(lexicon: Lexicon) -> None:
    features = dictionary_features(lexicon, ["中华人民共和国"])[0][0]
    assert features[0, 0 * LENGTH_BUCKETS + 3] > 0  # 中华人民共和国 begins here (length 5+)
    assert features[3, 1 * LENGTH_BUCKETS + 3] > 0  # ... and covers 民 in its middle
    assert features[6, 2 * LENGTH_BUCKETS + 3] > 0  # ... and ends at 国
    assert features[0, N_PLAIN + ENTITY_TAGS["ns"] * 4 + 0] > 0  # 中华人民共和国 is ns: a place


def test_words_added_with_jieba_after_the_first_call_are_seen(lexicon: Lexicon) -> None:
    word = "氪晶猫爪藤"
    assert dictionary_features(lexicon, [word])[0][0][0, 0 * LENGTH_BUCKETS + 3] == 0
    lexicon.tokenizer.add_word(word, 500, "nt")
    after = dictionary_features(lexicon, [word])[0][0]
    assert after[0, 0 * LENGTH_BUCKETS + 3] > 0
    assert after[0, N_PLAIN + ENTITY_TAGS["nt"] * 4 + 0] > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES + ["\u0003", "中\u0003", "<unk>", "a"]), min_size=1, max_size=8).map("".join), min_size=1, max_size=6))
def test_a_batch_holds_each_texts_inputs_by_the_definition(lexicon: Lexicon, texts: list[str]) -> None:
    """`Featuriser.batch` (vectorised over the batch): row r is text r's character ids, bigram
    ids (the character and the next, END after the last) and dictionary features, then padding."""
    chars = Vocab(["北", "京", "大", "学", "中", "\u0003", "\ue000", "😀", "\ud800", "<"])
    bigram_vocab = Vocab(["北京", "京大", "大学", "学生", "国\u0003", "中\u0003", "\u0003\u0003", "😀中", "\0中"])
    batch = Featuriser(chars, bigram_vocab, lexicon).batch(texts)
    steps = max(len(text) for text in texts)
    assert batch.lengths.tolist() == [len(text) for text in texts]
    assert batch.chars.shape == batch.bigrams.shape == (len(texts), steps)
    for row, text in enumerate(texts):
        padding = [0] * (steps - len(text))
        assert batch.chars[row].tolist() == chars.ids(text) + padding
        assert batch.bigrams[row].tolist() == bigram_vocab.ids(bigrams(text)) + padding
        np.testing.assert_array_equal(batch.lexicon[row, : len(text)].numpy(), dictionary_features(lexicon, [text])[0][0])
        assert not batch.lexicon[row, len(text) :].any()
