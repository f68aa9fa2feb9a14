"""Character and character-bigram vocabularies (ids <-> strings), JSON-serialisable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import cached_property

import numpy as np
import torch

PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
END = "\u0003"  # stands for "after the last character" in a bigram


class Vocab:
    """A string -> id table; ids 0, 1, 2 are padding, unknown and begin-of-sequence."""

    def __init__(self, items: Iterable[str]):
        self.items: list[str] = [PAD, UNK, BOS]
        # Each item once, where it first comes: a repeated item would have two rows, of which
        # lookups would train and read one chosen by a sort's tie-breaking.
        self.items += [item for item in dict.fromkeys(items) if item not in (PAD, UNK, BOS)]
        self.index = {item: i for i, item in enumerate(self.items)}

    @classmethod
    def build(cls, counts: Counter, min_count: int = 1, max_size: int | None = None) -> Vocab:
        ranked = [item for item, count in counts.most_common(max_size) if count >= min_count]
        return cls(ranked)

    def __len__(self) -> int:
        return len(self.items)

    def id(self, item: str) -> int:
        return self.index.get(item, 1)

    def ids(self, items: Iterable[str]) -> list[int]:
        get = self.index.get
        return [get(item, 1) for item in items]

    @cached_property
    def key_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The `string_keys` of the items of one or two characters, sorted, and their ids:
        `lookup` finds a batch's bigrams in one call instead of one dictionary lookup each
        (characters go through `code_point_table`)."""
        short = [(i, item) for i, item in enumerate(self.items) if i > 2 and len(item) <= 2]
        first = torch.tensor([ord(item[0]) for _, item in short], dtype=torch.int64)
        second = torch.tensor([ord(item[1]) if len(item) == 2 else -1 for _, item in short], dtype=torch.int64)
        keys, order = torch.sort(string_keys(first, second))
        return keys, torch.tensor([i for i, _ in short], dtype=torch.int64)[order]

    def code_point_table(self) -> torch.Tensor:
        """The ids of the one-character items by code point, 1 (<unk>) for other characters."""
        single = [(ord(item), i) for i, item in enumerate(self.items) if i > 2 and len(item) == 1]
        return by_code_point(torch.tensor([c for c, _ in single], dtype=torch.int64), torch.tensor([i for _, i in single], dtype=torch.int64), 1)

    def to_json(self) -> list[str]:
        return self.items

    @classmethod
    def from_json(cls, items: list[str]) -> Vocab:
        return cls(items[3:])


def bigrams(model_text: str) -> list[str]:
    """The right-hand bigram at each position: the character and the next one."""
    return [a + b for a, b in zip(model_text, model_text[1:] + END)]


def code_points(text: str) -> torch.Tensor:
    """The code points of `text` as int64."""
    # surrogatepass: a lone surrogate in user text is just another code point here
    return torch.from_numpy(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64))


MAX_CODE_POINT = 0x10FFFF


def by_code_point(code_points: torch.Tensor, values: torch.Tensor, missing: int) -> torch.Tensor:
    """A table indexed by code point (4.5 MB as int32): `values` at `code_points`, `missing`
    elsewhere. One indexing operation then replaces a binary search for strings of one
    character, the most frequent lookup of a batch."""
    table = torch.full((MAX_CODE_POINT + 1,), missing, dtype=torch.int32)
    table[code_points] = values.to(torch.int32)
    return table


@torch.jit.script
def string_keys(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """One integer per string of one character or two: the first code point above 22 bits,
    the second plus one below (-1 for strings of one character)."""
    return (first << 22) | (second + 1)


@torch.jit.script
def lookup(known: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The ids of strings given by their `keys` in a `Vocab.key_table`; 1 (<unk>) if absent."""
    if known.numel() == 0:
        return torch.ones_like(keys)
    index = torch.searchsorted(known, keys).clamp(max=known.numel() - 1)
    return torch.where(known[index] == keys, ids[index], 1)
