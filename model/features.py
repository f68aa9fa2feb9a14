"""Model inputs for one model string, and padding a list of them into a batch.

The only place where text becomes tensors; training and the tagger both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.lexicon import Lexicon
from model.vocab import Vocab, bigrams


@dataclass
class Inputs:
    chars: list[int]
    bigrams: list[int]
    lexicon: np.ndarray  # (n, Lexicon.size) float32

    def __len__(self) -> int:
        return len(self.chars)


@dataclass
class Batch:
    chars: torch.Tensor  # (B, T) long
    bigrams: torch.Tensor  # (B, T) long
    lexicon: torch.Tensor  # (B, T, F) float
    lengths: torch.Tensor  # (B,) long, on the CPU

    def to(self, device: torch.device | str) -> Batch:
        if str(device) == "cpu":
            return self
        return Batch(self.chars.to(device), self.bigrams.to(device), self.lexicon.to(device), self.lengths)


class Featuriser:
    def __init__(self, chars: Vocab, bigram_vocab: Vocab, lexicon: Lexicon):
        self.chars = chars
        self.bigrams = bigram_vocab
        self.lexicon = lexicon

    def inputs(self, model_text: str) -> Inputs:
        return self.inputs_many([model_text])[0]

    def inputs_many(self, model_texts: list[str]) -> list[Inputs]:
        """`inputs` of each text; the dictionary step runs once for all of them (faster)."""
        features = self.lexicon.features_many(model_texts)
        return [Inputs(self.chars.ids(text), self.bigrams.ids(bigrams(text)), lexicon) for text, lexicon in zip(model_texts, features)]


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
    return Batch(torch.from_numpy(chars), torch.from_numpy(bigram_ids), torch.from_numpy(lexicon), torch.tensor(lengths))
