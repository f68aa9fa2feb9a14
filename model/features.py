"""Model inputs for one model string, and padding a list of them into a batch.

The only place where text becomes tensors; training and the tagger both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.lexicon import Lexicon, WordMatches
from model.vocab import Vocab, bigrams


@dataclass
class Inputs:
    chars: list[int]
    bigrams: list[int]
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
        """`inputs` of each text; the dictionary step runs once for all of them (faster)."""
        features, words = self.lexicon.analyse_many(model_texts, self.words)
        return [
            Inputs(self.chars.ids(text), self.bigrams.ids(bigrams(text)), lexicon, None if words is None else words[i])
            for i, (text, lexicon) in enumerate(zip(model_texts, features))
        ]


def pad(items: list[Inputs]) -> Batch:
    """Pad to the longest item; every item must have at least one position."""
    lengths = [len(item) for item in items]
    steps = max(lengths)
    chars = np.zeros((len(items), steps), dtype=np.int64)
    bigram_ids = np.zeros((len(items), steps), dtype=np.int64)
    lexicon = np.zeros((len(items), steps, items[0].lexicon.shape[1]), dtype=np.float32)
    for row, item in enumerate(items):
        n = len(item)
        chars[row, :n] = item.chars
        bigram_ids[row, :n] = item.bigrams
        lexicon[row, :n] = item.lexicon
    words, word_weights = _pad_words(items, steps)
    return Batch(torch.from_numpy(chars), torch.from_numpy(bigram_ids), torch.from_numpy(lexicon), torch.tensor(lengths), words, word_weights)


def _pad_words(items: list[Inputs], steps: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(B, T, 4, K) word ids and weights (None without words); the words of a set fill its K slots in order."""
    if items[0].words is None:
        return None, None
    matches = [item.words for item in items]
    row = np.concatenate([np.full(len(m.position), r) for r, m in enumerate(matches)])
    cell = (row * steps + np.concatenate([m.position for m in matches])) * 4 + np.concatenate([m.role for m in matches])
    order = np.argsort(cell, kind="stable")
    cell = cell[order]
    slot = np.arange(len(cell)) - np.searchsorted(cell, cell)  # rank among the words of the same set
    slots = int(slot.max()) + 1 if len(slot) else 1  # at least one (empty) slot: a bag needs one
    words = np.zeros(len(items) * steps * 4 * slots, dtype=np.int64)
    weights = np.zeros(len(items) * steps * 4 * slots, dtype=np.float32)
    words[cell * slots + slot] = np.concatenate([m.word for m in matches])[order]
    weights[cell * slots + slot] = np.concatenate([m.weight for m in matches])[order]
    shape = (len(items), steps, 4, slots)
    return torch.from_numpy(words.reshape(shape)), torch.from_numpy(weights.reshape(shape))
