"""Model inputs for one model string, and padding a list of them into a batch.

The only place where text becomes tensors; training and the tagger both use it. Every
step works on the texts of a batch end to end, as numpy arrays: per-character Python
(dictionary lookups, padding row by row) held the GIL that the service's event loop needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.lexicon import Lexicon, WordMatches
from model.vocab import Vocab, bigram_keys, code_points, string_keys


@dataclass
class Inputs:
    chars: np.ndarray  # (n,) int64
    bigrams: np.ndarray  # (n,) int64
    lexicon: np.ndarray  # (n, Lexicon.size) float32
    words: WordMatches | None = None  # only for networks with word vectors

    def __len__(self) -> int:
        return len(self.chars)


@dataclass
class Batch:
    chars: torch.Tensor  # (B, T) long
    bigrams: torch.Tensor  # (B, T) long
    lexicon: torch.Tensor  # (B, T, F) float
    lengths: torch.Tensor  # (B,) long, on the CPU
    # SoftLexicon inputs, only for networks with word vectors: word ids and weights of each
    # position's B/M/E/S sets, K slots each (K = the most words any set of the batch has).
    words: torch.Tensor | None = None  # (B, T, 4, K) long
    word_weights: torch.Tensor | None = None  # (B, T, 4, K) float

    def to(self, device: torch.device | str) -> Batch:
        if str(device) == "cpu":
            return self
        words, weights = (self.words, self.word_weights) if self.words is None else (self.words.to(device), self.word_weights.to(device))
        return Batch(self.chars.to(device), self.bigrams.to(device), self.lexicon.to(device), self.lengths, words, weights)


class Featuriser:
    def __init__(self, chars: Vocab, bigram_vocab: Vocab, lexicon: Lexicon, words: Vocab | None = None):
        self.chars = chars
        self.bigrams = bigram_vocab
        self.lexicon = lexicon
        self.words = words

    def inputs(self, model_text: str) -> Inputs:
        return self.inputs_many([model_text])[0]

    def inputs_many(self, model_texts: list[str]) -> list[Inputs]:
        """`inputs` of each text, computed for all of them together (much faster)."""
        lengths, chars, bigram_ids, features, words = self._joined(model_texts)
        ends = np.cumsum(lengths)
        return [
            Inputs(chars[end - n : end], bigram_ids[end - n : end], lexicon, None if words is None else words[i])
            for i, (n, end, lexicon) in enumerate(zip(lengths, ends, features))
        ]

    def batch(self, model_texts: list[str]) -> Batch:
        """`pad(inputs_many(model_texts))` without the per-text objects in between."""
        lengths, chars, bigram_ids, features, words = self._joined(model_texts)
        return _padded(lengths, chars, bigram_ids, np.concatenate(features), words)

    def _joined(self, model_texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], list[WordMatches] | None]:
        """Lengths, then character and bigram ids of the texts end to end, then each text's
        dictionary features and word matches."""
        features, words = self.lexicon.analyse_many(model_texts, self.words)
        lengths = np.array([len(text) for text in model_texts], dtype=np.int64)
        chars = self.chars.ids_of_keys(string_keys(code_points("".join(model_texts))))
        return lengths, chars, self.bigrams.ids_of_keys(bigram_keys(model_texts)), features, words


def pad(items: list[Inputs]) -> Batch:
    """Pad to the longest item; every item must have at least one position."""
    lengths = np.array([len(item) for item in items], dtype=np.int64)
    words = None if items[0].words is None else [item.words for item in items]
    return _padded(
        lengths,
        np.concatenate([item.chars for item in items]),
        np.concatenate([item.bigrams for item in items]),
        np.concatenate([item.lexicon for item in items]),
        words,
    )


def _padded(lengths: np.ndarray, chars: np.ndarray, bigram_ids: np.ndarray, lexicon: np.ndarray, words: list[WordMatches] | None) -> Batch:
    """A batch from per-position inputs of texts of `lengths`, end to end."""
    rows, steps = len(lengths), int(lengths.max())
    # Each position's index in the flattened (rows, steps) grid.
    cell = np.arange(len(chars)) + np.repeat(np.arange(rows) * steps - (np.cumsum(lengths) - lengths), lengths)
    padded_chars = np.zeros(rows * steps, dtype=np.int64)
    padded_chars[cell] = chars
    padded_bigrams = np.zeros(rows * steps, dtype=np.int64)
    padded_bigrams[cell] = bigram_ids
    padded_lexicon = np.zeros((rows * steps, lexicon.shape[1]), dtype=np.float32)
    padded_lexicon[cell] = lexicon
    word_ids, word_weights = _pad_words(words, steps)
    return Batch(
        torch.from_numpy(padded_chars.reshape(rows, steps)),
        torch.from_numpy(padded_bigrams.reshape(rows, steps)),
        torch.from_numpy(padded_lexicon.reshape(rows, steps, -1)),
        torch.from_numpy(lengths),
        word_ids,
        word_weights,
    )


def _pad_words(matches: list[WordMatches] | None, steps: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(B, T, 4, K) word ids and weights (None without words); the words of a set fill its K slots in order."""
    if matches is None:
        return None, None
    row = np.concatenate([np.full(len(m.position), r) for r, m in enumerate(matches)])
    cell = (row * steps + np.concatenate([m.position for m in matches])) * 4 + np.concatenate([m.role for m in matches])
    order = np.argsort(cell, kind="stable")
    cell = cell[order]
    slot = np.arange(len(cell)) - np.searchsorted(cell, cell)  # rank among the words of the same set
    slots = int(slot.max()) + 1 if len(slot) else 1  # at least one (empty) slot: a bag needs one
    words = np.zeros(len(matches) * steps * 4 * slots, dtype=np.int64)
    weights = np.zeros(len(matches) * steps * 4 * slots, dtype=np.float32)
    words[cell * slots + slot] = np.concatenate([m.word for m in matches])[order]
    weights[cell * slots + slot] = np.concatenate([m.weight for m in matches])[order]
    shape = (len(matches), steps, 4, slots)
    return torch.from_numpy(words.reshape(shape)), torch.from_numpy(weights.reshape(shape))
