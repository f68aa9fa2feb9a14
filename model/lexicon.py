"""Dictionary-match features from jieba's dictionary (and any words added to it).

For every position of the model string and every dictionary word that covers it, the
word contributes to one feature according to its role there -- Begin, Middle, End or
Single -- and, for B/M/E, its length bucket (2, 3, 4, 5+). Each feature holds the
largest frequency weight log(1 + freq) / log(1 + max_freq) among the words in it.
A second block does the same by entity type for words that jieba tags as person
(nr, nrfg, nrt), place (ns) or organisation (nt). This is a cheaper, fixed-size
variant of SoftLexicon: no word vectors, 25 numbers per character.

Words added at run time with `jieba.add_word`, `jieba.load_userdict` or `set_user_words` flow
into the features: the lookup table is rebuilt whenever the tokenizer's dictionary has
grown or its total frequency has changed (a word removed with `jieba.del_word` alone
changes neither, and is seen at the next addition).

Matching is vectorised for speed (it was the largest Python cost of tagging): every
dictionary key, prefixes included, is stored as a 64-bit polynomial hash of its code
points in a sorted tensor, and the substrings of all texts of a batch are looked up
together, one substring length at a time, only where the shorter prefix matched. It is
TorchScript, so that the service's inference thread runs it without the GIL.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import jieba
import jieba.posseg
import numpy as np
import torch

from model.user_dict import ENTITY_OF_POS, ENTITY_TYPES, DictEntry
from model.vocab import MAX_CODE_POINT, Vocab, by_code_point, code_points

LENGTH_BUCKETS = 4  # 2, 3, 4, 5+
ENTITY_TAGS = {pos: ENTITY_TYPES.index(kind) for pos, kind in ENTITY_OF_POS.items()}  # feature block by POS
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
        # Words a user dictionary set, with what the tokenizer had for them before: (freq, tag).
        self._replaced: dict[str, tuple[int, str | None]] = {}
        # The service's inference thread reads the tables while a reload (SIGHUP) changes them.
        self._lock = threading.Lock()

    def set_user_words(self, entries: Iterable[DictEntry]) -> None:
        """Make `entries` (a user dictionary) the words added to the tokenizer's dictionary,
        replacing those of an earlier call: words it had before get back their frequency and tag."""
        with self._lock:
            self.pos_tokenizer.makesure_userdict_loaded()  # tags of earlier add_word calls into word_tag_tab
            tokenizer, tags = self.tokenizer, self.pos_tokenizer.word_tag_tab
            for word, (freq, tag) in self._replaced.items():
                tokenizer.add_word(word, freq)  # 0 for a word it did not have: a prefix only
                if tag is None:
                    tags.pop(word, None)
                else:
                    tags[word] = tag
            self._replaced = {}
            for entry in entries:
                if entry.word not in self._replaced:
                    self._replaced[entry.word] = (tokenizer.FREQ.get(entry.word, 0), tags.get(entry.word))
                tokenizer.add_word(entry.word, entry.freq, entry.pos)
            self.pos_tokenizer.makesure_userdict_loaded()
            self._signature = ()  # removals change neither the size nor the total: rebuild anyway

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The current dictionary as `word_cells` takes it: sorted key hashes, the index of
        each one-character key by code point, whether each key is a word, its weight and its
        entity kind."""
        table = self._current_table()
        return table.keys, table.single, table.is_word, table.weight, table.kind

    def word_matches(self, position: torch.Tensor, role: torch.Tensor, entry: torch.Tensor, word_vocab: Vocab, model_texts: list[str]) -> list[WordMatches]:
        """`word_cells`' matches in the texts joined by SEPARATOR as each text's SoftLexicon sets."""
        table = self._current_table()
        entries = entry.numpy()
        words = WordMatches(position.numpy(), role.numpy(), table.word_ids(word_vocab)[entries], table.weight.numpy()[entries])
        starts, ends = joined_spans(model_texts)
        return words.normalised(int(ends[-1])).split(starts, ends)

    def matched_words(self, model_texts: list[str]) -> Counter:
        """How often each dictionary word occurs in the texts (the word vocabulary is built from it)."""
        table = self._current_table()
        counts: Counter = Counter()
        for offset in range(0, len(model_texts), 1000):
            _, _, entry = match_words(code_points(SEPARATOR.join(model_texts[offset : offset + 1000])), table.keys, table.single, table.is_word)
            for index, count in zip(*np.unique(entry.numpy(), return_counts=True)):
                counts[table.words[index]] += int(count)
        return counts

    def _current_table(self) -> _Table:
        self.pos_tokenizer.makesure_userdict_loaded()
        tokenizer = self.tokenizer
        with self._lock:
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


def joined_spans(model_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Where each text starts and ends in SEPARATOR.join(model_texts)."""
    lengths = np.array([len(text) for text in model_texts], dtype=np.int64)
    ends = np.cumsum(lengths + len(SEPARATOR)) - len(SEPARATOR)
    return ends - lengths, ends


_MULTIPLIER = 0x100000001B3


def _hash_rows(code_points: np.ndarray) -> np.ndarray:
    """The polynomial hash of each row of a (words, length) array of code points, modulo 2**64
    and read as int64 (the bits `match_words` computes with torch's wrapping int64 arithmetic)."""
    hashes = np.zeros(len(code_points), dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        for column in code_points.T.astype(np.uint64):
            hashes = hashes * np.uint64(_MULTIPLIER) + column
    return hashes.view(np.int64)


class _Table:
    """Every key of a jieba dictionary (words and their prefixes) as a sorted hash tensor,
    with each key's weight, entity kind (-1 for none) and whether it is a word (freq > 0)."""

    def __init__(self, freq: dict[str, int], tags: dict[str, str], log_max: float):
        by_length: dict[int, list[str]] = {}
        for word in freq:
            if SEPARATOR not in word:
                by_length.setdefault(len(word), []).append(word)
        words = [word for length in sorted(by_length) for word in by_length[length]]
        hashes = np.concatenate([_hash_rows(code_points("".join(group)).numpy().reshape(len(group), length)) for length, group in sorted(by_length.items())])
        order = np.argsort(hashes)
        counts = np.array([freq[word] for word in words], dtype=np.float64)[order]
        self.keys = torch.from_numpy(hashes[order])
        # A one-character key's hash is its code point: -1 where a character is no key.
        single = torch.nonzero((self.keys >= 0) & (self.keys <= MAX_CODE_POINT)).squeeze(1)
        self.single = by_code_point(self.keys[single], single, -1)
        self.is_word = torch.from_numpy(counts > 0)
        self.weight = torch.from_numpy(np.minimum(np.log1p(counts) / log_max, 1.0).astype(np.float32))
        self.kind = torch.from_numpy(np.array([ENTITY_TAGS.get(tags.get(word), -1) for word in words], dtype=np.int64)[order])
        self.words = [words[i] for i in order]
        self._word_ids: tuple[Vocab, np.ndarray] | None = None

    def word_ids(self, vocab: Vocab) -> np.ndarray:
        """Each key's id in `vocab` (<unk> for keys it lacks, e.g. words added at run time)."""
        if self._word_ids is None or self._word_ids[0] is not vocab:
            self._word_ids = (vocab, np.array(vocab.ids(self.words), dtype=np.int64))
        return self._word_ids[1]


# The matcher and the features are TorchScript: the service calls them from its inference
# thread once per batch and they run without the GIL. As numpy (a few dozen calls per
# batch, each releasing and retaking the GIL) every call waited for the busy event loop.


@torch.jit.script
def match_words(code_points: torch.Tensor, keys: torch.Tensor, single: torch.Tensor, is_word: torch.Tensor, multiplier: int = _MULTIPLIER) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(start, length, table index) of every dictionary word occurring in the string of
    `code_points`: substrings are hashed one length at a time, only where the shorter
    prefix is a key. One-character keys are found in `single` (by code point)."""
    # index_select with the indices of a mask: x[mask] would find them again for each tensor.
    n = code_points.numel()
    last = keys.numel() - 1
    starts: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int64)]
    lengths: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int64)]
    entries: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int64)]
    index = single.index_select(0, code_points).long()
    position = torch.nonzero(index >= 0).squeeze(1)  # one-character keys: a word or a prefix of one
    hashes, index = code_points.index_select(0, position), index.index_select(0, position)  # a character's hash is its code point
    length = 1
    while position.numel() > 0:
        word = torch.nonzero(is_word.index_select(0, index)).squeeze(1)
        starts.append(position.index_select(0, word))
        lengths.append(torch.full([word.numel()], length, dtype=torch.int64))
        entries.append(index.index_select(0, word))
        # one character longer, where the text goes on
        length += 1
        longer = torch.nonzero(position + length <= n).squeeze(1)
        position, hashes = position.index_select(0, longer), hashes.index_select(0, longer)
        hashes = hashes * multiplier + code_points.index_select(0, position + (length - 1))  # wraps modulo 2**64
        index = torch.searchsorted(keys, hashes).clamp_(max=last)
        found = torch.nonzero(keys.index_select(0, index) == hashes).squeeze(1)  # a key: a word or a prefix of one
        position, hashes, index = position.index_select(0, found), hashes.index_select(0, found), index.index_select(0, found)
    return torch.cat(starts), torch.cat(lengths), torch.cat(entries)


@torch.jit.script
def word_cells(
    code_points: torch.Tensor,
    keys: torch.Tensor,
    single: torch.Tensor,
    is_word: torch.Tensor,
    weight: torch.Tensor,
    kind: torch.Tensor,
    buckets: int = LENGTH_BUCKETS,
    n_plain: int = N_PLAIN,
    n_features: int = N_FEATURES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (len, N_FEATURES) features of the string of `code_points`, and each dictionary
    word's (position, role, table index) at every character it covers: role 0 B at its
    first, 1 M inside, 2 E at its last, 3 S for a one-character word."""
    start, length, entry = match_words(code_points, keys, single, is_word)
    multi = torch.nonzero(length > 1).squeeze(1)
    singles = torch.nonzero(length == 1).squeeze(1)
    multi_start, multi_length = start.index_select(0, multi), length.index_select(0, multi)
    inner = multi_length - 2
    inner_match = multi.repeat_interleave(inner)
    inner_offset = torch.arange(inner_match.numel()) - (torch.cumsum(inner, 0) - inner).repeat_interleave(inner) + 1
    match = torch.cat([multi, inner_match, multi, singles])
    position = torch.cat([multi_start, start.index_select(0, inner_match) + inner_offset, multi_start + multi_length - 1, start.index_select(0, singles)])
    role = torch.cat([torch.zeros_like(multi), torch.ones_like(inner_match), torch.full_like(multi, 2), torch.full_like(singles, 3)])
    entry = entry.index_select(0, match)
    bucket = length.index_select(0, match).clamp(max=buckets + 1) - 2  # 2, 3, 4, 5+
    plain = torch.where(role == 3, n_plain - 1, role * buckets + bucket)
    value, entity = weight.index_select(0, entry), kind.index_select(0, entry)
    typed = torch.nonzero(entity >= 0).squeeze(1)
    rows = torch.cat([position, position.index_select(0, typed)])
    columns = torch.cat([plain, n_plain + entity.index_select(0, typed) * 4 + role.index_select(0, typed)])
    out = torch.zeros(code_points.numel() * n_features, dtype=torch.float32)
    out.scatter_reduce_(0, rows * n_features + columns, torch.cat([value, value.index_select(0, typed)]), "amax")
    return out.view(code_points.numel(), n_features), position, role, entry
