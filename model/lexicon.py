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

import jieba
import jieba.posseg
import numpy as np

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
        ends = np.cumsum([len(text) + len(SEPARATOR) for text in model_texts])
        return [out[end - len(SEPARATOR) - len(text) : end - len(SEPARATOR)] for text, end in zip(model_texts, ends)]

    def _current_table(self) -> _Table:
        self.pos_tokenizer.makesure_userdict_loaded()
        tokenizer = self.tokenizer
        signature = (id(tokenizer.FREQ), len(tokenizer.FREQ), tokenizer.total)
        if signature != self._signature:
            self._table = _Table(tokenizer.FREQ, self.pos_tokenizer.word_tag_tab, self._log_max)
            self._signature = signature
        return self._table


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
    # surrogatepass: a lone surrogate in user text is just another code point here
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


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
