"""Dictionary-match features from jieba's dictionary (and any words added to it).

For every position of the model string and every dictionary word that covers it, the
word contributes to one feature according to its role there -- Begin, Middle, End or
Single -- and, for B/M/E, its length bucket (2, 3, 4, 5+). Each feature holds the
largest frequency weight log(1 + freq) / log(1 + max_freq) among the words in it.
A second block does the same by entity type for words that jieba tags as person
(nr, nrfg, nrt), place (ns) or organisation (nt). This is a cheaper, fixed-size
variant of SoftLexicon: no word vectors, 25 numbers per character.

Words added at run time with `jieba.add_word`, `jieba.load_userdict` or `add_words` flow
into the features: the lookup table is rebuilt whenever the tokenizer's dictionary has
grown or its total frequency has changed (a word removed with `jieba.del_word` alone
changes neither, and is seen at the next addition).

Matching is vectorised for speed (it was the largest Python cost of tagging): every
dictionary key, prefixes included, is stored as a 64-bit polynomial hash of its code
points in a sorted array, and the substrings of all texts of a batch are looked up
together, one substring length at a time, only where the shorter prefix matched.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import jieba
import jieba.posseg
import numpy as np

from model.vocab import Vocab, code_points

LENGTH_BUCKETS = 4  # 2, 3, 4, 5+
ENTITY_TAGS = {"nr": 0, "nrfg": 0, "nrt": 0, "ns": 1, "nt": 2}
N_PLAIN = 3 * LENGTH_BUCKETS + 1
N_FEATURES = N_PLAIN + 3 * 4


class Lexicon:
    """Computes dictionary features with a jieba tokenizer (the global one by default)."""

    size = N_FEATURES

    def __init__(self, pos_tokenizer: jieba.posseg.POSTokenizer | None = None):
        self.pos_tokenizer = pos_tokenizer or jieba.posseg.dt
        self.tokenizer = self.pos_tokenizer.tokenizer
        self.tokenizer.check_initialized()
        self._log_max = math.log1p(max(self.tokenizer.FREQ.values()))
        self._signature: tuple = ()
        self._table: _Table | None = None

    def add_words(self, path: str) -> tuple[int, list[str]]:
        """Load a user dictionary (`word [freq] [pos]` per line) into the tokenizer.

        Returns the number of words added and the lines that could not be used.
        """
        added, rejected = 0, []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                parts = line.strip().split()
                if not parts or line.lstrip().startswith("#"):
                    continue
                if len(parts) > 3 or (len(parts) >= 2 and not parts[1].isdigit()):
                    rejected.append(line.rstrip("\n"))
                    continue
                freq = int(parts[1]) if len(parts) >= 2 else None
                tag = parts[2] if len(parts) == 3 else None
                self.tokenizer.add_word(parts[0], freq, tag)
                added += 1
        return added, rejected

    def features(self, model_text: str) -> np.ndarray:
        """A float32 array of shape (len(model_text), N_FEATURES)."""
        return self.features_many([model_text])[0]

    def features_many(self, model_texts: list[str]) -> list[np.ndarray]:
        """`features` of each text, computed together (much faster than one by one)."""
        return self.analyse_many(model_texts)[0]

    def analyse_many(self, model_texts: list[str], word_vocab: Vocab | None = None) -> tuple[list[np.ndarray], list[WordMatches] | None]:
        """The features of each text and, given a word vocabulary, the words matched at each
        of its positions (SoftLexicon's B/M/E/S sets), from one dictionary pass."""
        joined = SEPARATOR.join(model_texts)
        out = np.zeros((len(joined), N_FEATURES), dtype=np.float32)
        table = self._current_table()
        start, length, entry = table.matches(joined)
        weight, kind = table.weight[entry], table.kind[entry]
        single = length == 1
        bucket = np.minimum(length, 5) - 2
        # (match, position, role) triples: B at the first character, M inside, E at the last.
        multi = np.flatnonzero(~single)
        inner = length[multi] - 2
        inner_match = np.repeat(multi, inner)
        inner_offset = np.arange(len(inner_match)) - np.repeat(np.cumsum(inner) - inner, inner) + 1
        match = np.concatenate([multi, inner_match, multi])
        position = np.concatenate([start[multi], start[inner_match] + inner_offset, start[multi] + length[multi] - 1])
        role = np.concatenate([np.zeros(len(multi), np.int64), np.ones(len(inner_match), np.int64), np.full(len(multi), 2)])
        singles = np.flatnonzero(single)
        typed = kind[match] >= 0
        typed_singles = singles[kind[singles] >= 0]
        rows = np.concatenate([position, start[singles], position[typed], start[typed_singles]])
        columns = np.concatenate(
            [
                role * LENGTH_BUCKETS + bucket[match],
                np.full(len(singles), N_PLAIN - 1),
                N_PLAIN + kind[match][typed] * 4 + role[typed],
                N_PLAIN + kind[typed_singles] * 4 + 3,
            ]
        )
        values = np.concatenate([weight[match], weight[singles], weight[match][typed], weight[typed_singles]])
        np.maximum.at(out.reshape(-1), rows * N_FEATURES + columns, values)
        ends = np.cumsum([len(text) + len(SEPARATOR) for text in model_texts]) - len(SEPARATOR)
        starts = ends - np.array([len(text) for text in model_texts], dtype=np.int64)
        features = [out[a:b] for a, b in zip(starts, ends)]
        if word_vocab is None:
            return features, None
        matched = np.concatenate([match, singles])
        words = WordMatches(
            np.concatenate([position, start[singles]]),
            np.concatenate([role, np.full(len(singles), 3)]),
            table.word_ids(word_vocab)[entry[matched]],
            weight[matched],
        )
        return features, words.normalised(len(joined)).split(starts, ends)

    def matched_words(self, model_texts: list[str]) -> Counter:
        """How often each dictionary word occurs in the texts (the word vocabulary is built from it)."""
        table = self._current_table()
        counts: Counter = Counter()
        for offset in range(0, len(model_texts), 1000):
            _, _, entry = table.matches(SEPARATOR.join(model_texts[offset : offset + 1000]))
            for index, count in zip(*np.unique(entry, return_counts=True)):
                counts[table.words[index]] += int(count)
        return counts

    def _current_table(self) -> _Table:
        self.pos_tokenizer.makesure_userdict_loaded()
        tokenizer = self.tokenizer
        signature = (id(tokenizer.FREQ), len(tokenizer.FREQ), tokenizer.total)
        if signature != self._signature:
            self._table = _Table(tokenizer.FREQ, self.pos_tokenizer.word_tag_tab, self._log_max)
            self._signature = signature
        return self._table


@dataclass
class WordMatches:
    """The dictionary words at the positions of one text, for SoftLexicon pooling: each word
    is in the B, M, E or S set of a position (role 0-3). Weights are SoftLexicon's: a word's
    frequency weight times 4 over the summed weights of all words at that position."""

    position: np.ndarray  # int64
    role: np.ndarray  # int64, 0 B, 1 M, 2 E, 3 S
    word: np.ndarray  # int64 ids in the word vocabulary (1 = <unk>)
    weight: np.ndarray  # float32

    def normalised(self, size: int) -> WordMatches:
        totals = np.bincount(self.position, weights=self.weight, minlength=size)
        weight = (4 * self.weight / np.maximum(totals[self.position], 1e-6)).astype(np.float32)
        return WordMatches(self.position, self.role, self.word, weight)

    def split(self, starts: np.ndarray, ends: np.ndarray) -> list[WordMatches]:
        """Per text, positions relative to each text's start."""
        order = np.argsort(self.position, kind="stable")
        position = self.position[order]
        lows, highs = np.searchsorted(position, starts), np.searchsorted(position, ends)
        return [
            WordMatches(position[lo:hi] - start, self.role[order[lo:hi]], self.word[order[lo:hi]], self.weight[order[lo:hi]])
            for start, lo, hi in zip(starts, lows, highs)
        ]


SEPARATOR = "\0"  # between the texts of a batch; no dictionary word contains it
_MULTIPLIER = np.uint64(0x100000001B3)


def _hash_rows(code_points: np.ndarray) -> np.ndarray:
    """The polynomial hash of each row of a (words, length) array of code points."""
    hashes = np.zeros(len(code_points), dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        for column in code_points.T:
            hashes = hashes * _MULTIPLIER + column
    return hashes


def _code_points(text: str) -> np.ndarray:
    return code_points(text).astype(np.uint64)  # hashed modulo 2**64


class _Table:
    """Every key of a jieba dictionary (words and their prefixes) as a sorted hash array,
    with each key's weight, entity kind (-1 for none) and whether it is a word (freq > 0)."""

    def __init__(self, freq: dict[str, int], tags: dict[str, str], log_max: float):
        by_length: dict[int, list[str]] = {}
        for word in freq:
            if SEPARATOR not in word:
                by_length.setdefault(len(word), []).append(word)
        words = [word for length in sorted(by_length) for word in by_length[length]]
        hashes = np.concatenate([_hash_rows(_code_points("".join(group)).reshape(len(group), length)) for length, group in sorted(by_length.items())])
        order = np.argsort(hashes)
        counts = np.array([freq[word] for word in words], dtype=np.float64)[order]
        self.keys = hashes[order]
        self.is_word = counts > 0
        self.weight = np.minimum(np.log1p(counts) / log_max, 1.0).astype(np.float32)
        self.kind = np.array([ENTITY_TAGS.get(tags.get(word), -1) for word in words], dtype=np.int64)[order]
        self.words = [words[i] for i in order]
        self._word_ids: tuple[Vocab, np.ndarray] | None = None

    def word_ids(self, vocab: Vocab) -> np.ndarray:
        """Each key's id in `vocab` (<unk> for keys it lacks, e.g. words added at run time)."""
        if self._word_ids is None or self._word_ids[0] is not vocab:
            self._word_ids = (vocab, np.array(vocab.ids(self.words), dtype=np.int64))
        return self._word_ids[1]

    def matches(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, length, table index) of every dictionary word occurring in `text`."""
        code_points = _code_points(text)
        n = len(code_points)
        position = np.arange(n)
        hashes = np.zeros(n, dtype=np.uint64)
        starts, lengths, entries = [], [], []
        length = 1
        with np.errstate(over="ignore"):
            while len(position):
                hashes = hashes * _MULTIPLIER + code_points[position + length - 1]
                index = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
                found = self.keys[index] == hashes  # a key (a word or a prefix of one)
                position, hashes, index = position[found], hashes[found], index[found]
                word = self.is_word[index]
                starts.append(position[word])
                lengths.append(np.full(int(word.sum()), length))
                entries.append(index[word])
                length += 1
                longer = position + length <= n
                position, hashes = position[longer], hashes[longer]
        if not starts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return np.concatenate(starts), np.concatenate(lengths), np.concatenate(entries)
