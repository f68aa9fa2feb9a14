"""User dictionaries whose entries hold: each occurrence of an entry is one token, with the
entry's POS and entity type, forced inside decoding (TaggerNetwork.forward's `forced`).

File format, jieba's with an optional entity-type column, one entry per line:

    word [freq] [pos] [type]        e.g.  字节跳动 1000 nt   抖音 nz   顺丰 1000 nt ORG

`freq` only weighs the word in the dictionary features (as in jieba); `pos` is any lower-case
tag: one of the model's tag set (PKU) is forced in decoding, another (jieba's nrfg, a tag of
the user's own) is given to the token as it is; `type` is PER, LOC, ORG or O (not an entity).
Without a type, a POS of nr, ns or nt (or jieba's nrfg, nrt) makes the entry an entity of type
PER, LOC or ORG, any other POS makes it not an entity, and an entry without a POS leaves the
entity decision to the model. Lines starting with # are comments.

Overlapping entries: leftmost first, then longest (forward maximum matching, as jieba's
dictionary-only mode cuts): in 字节跳动旗下 with entries 字节跳动 and 跳动旗下, 字节跳动 holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.text import normalise

ENTITY_TYPES = ("PER", "LOC", "ORG")
NOT_AN_ENTITY = "O"
# POS tags of persons, places and organisations: PKU's and jieba's (nrfg, nrt).
ENTITY_OF_POS = {"nr": "PER", "nrfg": "PER", "nrt": "PER", "ns": "LOC", "nt": "ORG"}
_LINE = re.compile(r"(\S+)(?:\s+(\d+))?(?:\s+([a-z]+))?(?:\s+(PER|LOC|ORG|O))?")


class UserDictionaryError(ValueError):
    """A user dictionary file that cannot be read at all; the message names the file."""


@dataclass(frozen=True, slots=True)
class DictEntry:
    word: str
    freq: int | None = None
    pos: str | None = None
    type: str | None = None  # PER, LOC, ORG, O (not an entity) or None (the model decides)

    @classmethod
    def make(cls, word: str, freq: int | None = None, pos: str | None = None, type: str | None = None) -> DictEntry:
        """An entry with its entity type implied by its POS when none is given."""
        if type is None and pos is not None:
            type = ENTITY_OF_POS.get(pos, NOT_AN_ENTITY)
        return cls(word, freq, pos, type)


@dataclass(frozen=True, slots=True)
class DictMatch:
    """An occurrence of an entry: code-point offsets into the text as sent, end-exclusive."""

    start: int
    end: int
    entry: DictEntry


@dataclass(frozen=True, slots=True)
class Rejected:
    line_number: int
    line: str
    reason: str


class UserDictionary:
    """Entries by word (a later line for the same word wins) and a matcher over texts."""

    def __init__(self, entries: Iterable[DictEntry] = (), source: str | None = None, rejected: Sequence[Rejected] = ()):
        # Matching runs on normalised text (full-width ASCII as half-width, 1:1), as the model reads it.
        self.entries = {normalise(entry.word): entry for entry in entries}
        self.source = source
        self.rejected = list(rejected)
        self._lengths = sorted({len(word) for word in self.entries}, reverse=True)
        first = sorted({word[0] for word in self.entries})
        self._starts = re.compile("[" + "".join(re.escape(c) for c in first) + "]") if first else None

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def read(cls, path: str | Path) -> UserDictionary:
        """The dictionary in the file at `path`; lines it cannot use are kept in `rejected` with
        the reason."""
        try:
            lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UserDictionaryError(f"user dictionary {path}: cannot read it ({type(error).__name__}: {error}); expected a UTF-8 text file, one entry per line: word [freq] [pos] [type]") from error
        return cls.parse(lines, str(path))

    @classmethod
    def parse(cls, lines: Iterable[str], source: str | None = None) -> UserDictionary:
        entries, rejected = [], []
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            match = _LINE.fullmatch(text)
            if match is None:
                rejected.append(Rejected(number, line, "expected: word [freq] [pos] [type], type one of PER, LOC, ORG, O"))
                continue
            word, freq, pos, kind = match.groups()
            entries.append(DictEntry.make(word, int(freq) if freq else None, pos, kind))
        return cls(entries, source, rejected)

    def matches(self, text: str, request_dict: UserDictionary | None = None) -> list[DictMatch]:
        """Non-overlapping occurrences of the entries in `text`, leftmost first, then longest;
        `request_dict` (a request's own entries) is matched as if merged into this one, its
        entries winning over this one's for the same word, without copying this one."""
        layers = [d for d in (request_dict, self) if d is not None and d._starts is not None]
        if not layers:
            return []
        normal = normalise(text)  # 1:1, so offsets stay those of `text`
        starts = sorted({m.start() for d in layers for m in d._starts.finditer(normal)})
        lengths = sorted({n for d in layers for n in d._lengths}, reverse=True)
        found: list[DictMatch] = []
        free_from = 0
        for start in starts:
            if start < free_from:
                continue
            for length in lengths:
                word = normal[start : start + length]
                entry = next((d.entries[word] for d in layers if word in d.entries), None)
                if entry is not None:
                    found.append(DictMatch(start, start + length, entry))
                    free_from = start + length
                    break
        return found
