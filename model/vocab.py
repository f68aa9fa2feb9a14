"""Character and character-bigram vocabularies (ids <-> strings), JSON-serialisable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
END = "\u0003"  # stands for "after the last character" in a bigram


class Vocab:
    """A string -> id table; ids 0, 1, 2 are padding, unknown and begin-of-sequence."""

    def __init__(self, items: Iterable[str]):
        self.items: list[str] = [PAD, UNK, BOS]
        self.items += [item for item in items if item not in (PAD, UNK, BOS)]
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

    def to_json(self) -> list[str]:
        return self.items

    @classmethod
    def from_json(cls, items: list[str]) -> Vocab:
        return cls(items[3:])


def bigrams(model_text: str) -> list[str]:
    """The right-hand bigram at each position: the character and the next one."""
    return [a + b for a, b in zip(model_text, model_text[1:] + END)]
