"""Model inputs: a list of model strings becomes one padded `Batch`.

The only place where text becomes tensors; training and the tagger both call
`Featuriser.batch`. A batch's inputs come from one TorchScript call over its texts end to
end, which runs without the GIL. Per-character Python, or the few dozen numpy calls per batch that each release and
retake the GIL, made the service's inference thread wait for the busy event loop: a batch
of 32 spent 17-20 ms there on its inputs, against 3 ms in-process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.lexicon import SEPARATOR, Lexicon, WordMatches, word_cells
from model.scripting import owned_by_torchscript
from model.vocab import END, Vocab, code_points, lookup, string_keys


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
        # Only the vocabularies' lookup tables are kept: a Vocab's dict of 150k bigrams is 23 MB
        # of Python objects that nothing here looks up.
        self._char_table = chars.code_point_table()
        self._bigram_table = bigram_vocab.key_table
        self.lexicon = lexicon
        self.words = words
        self._tables: tuple[torch.Tensor, torch.jit.ScriptModule] | None = None

    def batch(self, model_texts: list[str]) -> Batch:
        """The texts' inputs, padded to the longest, from one TorchScript call."""
        lengths = [len(text) for text in model_texts]
        chars, bigram_ids, lexicon, lengths_tensor, position, role, entry = self._current_tables().batch(_code_point_list(model_texts), lengths)
        words = self._words(model_texts, position, role, entry)
        return Batch(chars, bigram_ids, lexicon, lengths_tensor, *_pad_words(words, max(lengths)))

    def _words(self, model_texts: list[str], position: torch.Tensor, role: torch.Tensor, entry: torch.Tensor) -> list[WordMatches] | None:
        return None if self.words is None else self.lexicon.word_matches(position, role, entry, self.words, model_texts)

    def build_tables(self) -> None:
        """Build the lookup tables now rather than for the first batch (Tagger.load does, so
        that the memory their building frees can be given back with the rest)."""
        self._current_tables()

    def _current_tables(self) -> torch.jit.ScriptModule:
        """The vocabularies' and the dictionary's tables in a module that TorchScript owns,
        rebuilt when the dictionary changes (words added at run time)."""
        dictionary = self.lexicon.tensors()
        if self._tables is None or self._tables[0] is not dictionary[0]:
            tables = _Tables(self._char_table, *self._bigram_table, *dictionary)
            self._tables = (dictionary[0], owned_by_torchscript(torch.jit.script(tables)))
        return self._tables[1]


def _code_point_list(model_texts: list[str]) -> list[int]:
    return code_points(SEPARATOR.join(model_texts)).tolist()


class _Tables(torch.nn.Module):
    """The lookup tables as buffers, so that the service's inference thread can compute a
    batch's inputs in one call without the GIL: tensors made in Python (arguments, or buffers
    of a module scripted in Python) make TorchScript take the GIL whenever it drops a
    reference to them, and the event loop holds the GIL most of the time. Hence also the
    texts as lists of ints and the save/load round trip (owned_by_torchscript)."""

    NAMES = ("char_table", "bigram_keys", "bigram_ids", "keys", "single", "is_word", "weight", "kind")  # joined_inputs' order

    def __init__(self, *tables: torch.Tensor):
        super().__init__()
        for name, table in zip(self.NAMES, tables, strict=True):
            self.register_buffer(name, table)

    def forward(self, code_point_list: list[int], lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`joined_inputs` of the texts of `lengths` joined by SEPARATOR (`code_point_list`)."""
        return joined_inputs(
            torch.tensor(code_point_list, dtype=torch.int64),
            torch.tensor(lengths, dtype=torch.int64),
            self.char_table,
            self.bigram_keys,
            self.bigram_ids,
            self.keys,
            self.single,
            self.is_word,
            self.weight,
            self.kind,
        )

    @torch.jit.export
    def batch(self, code_point_list: list[int], lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded (B, T) ids and (B, T, F) features, the lengths, and the word matches."""
        chars, bigram_ids, lexicon, position, role, entry = self.forward(code_point_list, lengths)
        length_tensor = torch.tensor(lengths, dtype=torch.int64)
        padded_chars, padded_bigrams, padded_lexicon = padded(length_tensor, chars, bigram_ids, lexicon)
        return padded_chars, padded_bigrams, padded_lexicon, length_tensor, position, role, entry


@torch.jit.script
def joined_inputs(
    code_points: torch.Tensor,
    lengths: torch.Tensor,
    char_table: torch.Tensor,
    bigram_keys: torch.Tensor,
    bigram_ids: torch.Tensor,
    keys: torch.Tensor,
    single: torch.Tensor,
    is_word: torch.Tensor,
    weight: torch.Tensor,
    kind: torch.Tensor,
    end: int = ord(END),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For texts of `lengths` joined by one separator each (`code_points`): every character's
    id, bigram id and dictionary features, end to end without the separators, and
    `word_cells`' matches (positions in the joined string)."""
    features, position, role, entry = word_cells(code_points, keys, single, is_word, weight, kind)
    text = torch.arange(lengths.numel()).repeat_interleave(lengths)
    index = torch.arange(text.numel()) + text  # in the joined string: one separator before each later text
    last = torch.zeros(text.numel(), dtype=torch.bool)
    last[(torch.cumsum(lengths, 0) - 1)[lengths > 0]] = True
    following = torch.where(last, end, code_points[(index + 1).clamp(max=code_points.numel() - 1)])
    chars = char_table.index_select(0, code_points[index]).long()
    bigram = lookup(bigram_keys, bigram_ids, string_keys(code_points[index], following))
    return chars, bigram, features[index], position, role, entry


@torch.jit.script
def padded(lengths: torch.Tensor, chars: torch.Tensor, bigram_ids: torch.Tensor, lexicon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) character and bigram ids and (B, T, F) features from those of texts of `lengths`, end to end."""
    rows, steps = lengths.numel(), int(lengths.max())
    text = torch.arange(rows).repeat_interleave(lengths)
    cell = torch.arange(text.numel()) + (text * steps - (torch.cumsum(lengths, 0) - lengths)[text])  # in the (B * T) grid
    padded_chars = torch.zeros(rows * steps, dtype=torch.int64).index_copy_(0, cell, chars)
    padded_bigrams = torch.zeros(rows * steps, dtype=torch.int64).index_copy_(0, cell, bigram_ids)
    padded_lexicon = torch.zeros(rows * steps, lexicon.shape[1], dtype=torch.float32).index_copy_(0, cell, lexicon)
    return padded_chars.view(rows, steps), padded_bigrams.view(rows, steps), padded_lexicon.view(rows, steps, lexicon.shape[1])


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
