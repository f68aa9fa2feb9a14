"""Character and character-bigram vocabularies (ids <-> strings), JSON-serialisable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import cached_property

import numpy as np

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

    def ids_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """`ids` of one- or two-character strings given as `string_keys` (vectorised: a batch's
        characters or bigrams in one call instead of a dictionary lookup each)."""
        known, ids = self._key_table
        index = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        return np.where(known[index] == keys, ids[index], 1)

    @cached_property
    def _key_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys of the items of one or two characters, sorted, and their ids."""
        pairs = sorted(
            (int(string_keys(code_points(item[0]), code_points(item[1:]) if len(item) == 2 else None)[0]), i)
            for i, item in enumerate(self.items)
            if i > 2 and len(item) <= 2
        )
        pairs = pairs or [(-1, 1)]
        return np.array([k for k, _ in pairs], dtype=np.int64), np.array([i for _, i in pairs], dtype=np.int64)

    def to_json(self) -> list[str]:
        return self.items

    @classmethod
    def from_json(cls, items: list[str]) -> Vocab:
        return cls(items[3:])


def bigrams(model_text: str) -> list[str]:
    """The right-hand bigram at each position: the character and the next one."""
    return [a + b for a, b in zip(model_text, model_text[1:] + END)]


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as int64."""
    # surrogatepass: a lone surrogate in user text is just another code point here
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)


def string_keys(first: np.ndarray, second: np.ndarray | None = None) -> np.ndarray:
    """One integer per string of one character (`first`) or two (`first` + `second`), for
    `Vocab.ids_of_keys`: the first code point above 22 bits, the second plus one below."""
    return first << 22 if second is None else (first << 22) | (second + 1)


def bigram_keys(model_texts: list[str]) -> np.ndarray:
    """`string_keys` of the `bigrams` of each text, end to end."""
    joined = code_points("".join(model_texts))
    lengths = np.array([len(text) for text in model_texts], dtype=np.int64)
    following = np.empty_like(joined)
    following[:-1] = joined[1:]
    following[(np.cumsum(lengths) - 1)[lengths > 0]] = ord(END)  # after each text's last character
    return string_keys(joined, following)
