"""Normalisation and atomisation with an offset map back to the original text.

The model never sees the user's text directly. It sees a *model string* in which
every character stands for one *atom* of the original:

- full-width ASCII and the ideographic space become their half-width forms, so
  "ＩＢＭ１９９８" (People's Daily style) and "IBM1998" (what users send) look alike;
- a run of Latin letters/digits becomes one placeholder character (LATIN or NUMBER),
  so words such as "iPhone" or numbers such as "3.14" are never split inside and the
  sequence the RNN runs over is shorter;
- combining marks, variation selectors, emoji modifiers and ZWJ sequences stay with
  the character they modify, so a grapheme is never split;
- a run of whitespace is one atom that the tagger never sends to the model.

Every atom keeps its (start, end) span in the original string, and every offset the
tagger returns is computed from those spans, so offsets always index the text exactly
as sent.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

LATIN = "\ue000"  # placeholder for a run of Latin letters (digits may follow)
NUMBER = "\ue001"  # placeholder for a run of digits, with inner '.' or ','
SPACE = " "  # a run of whitespace

# Sentence-final marks: a chunk may end after any of them.
SENTENCE_END = set("。！？!?；;…")
# Clause marks: used to split a sentence that is longer than the model's maximum.
CLAUSE_END = set("，,、：:）)」』》")

_ZWJ = "\u200d"


def normalise_char(char: str) -> str:
    """Full-width ASCII and U+3000 to half-width; everything else unchanged (1:1)."""
    code = ord(char)
    if 0xFF01 <= code <= 0xFF5E:
        return chr(code - 0xFEE0)
    if code == 0x3000:
        return " "
    return char


def _is_attached(char: str) -> bool:
    """True for characters that belong to the previous grapheme."""
    if char in ("\ufe0e", "\ufe0f", _ZWJ):
        return True
    if 0x1F3FB <= ord(char) <= 0x1F3FF:  # emoji skin-tone modifiers
        return True
    return unicodedata.category(char) in ("Mn", "Me", "Mc")


def _is_ascii_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


@dataclass(frozen=True)
class Atoms:
    """The model string of a text and, per atom, its span in the original text."""

    model_text: str
    spans: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.model_text)

    def char_to_atom(self) -> list[int]:
        """For each character of the original text, the index of its atom."""
        n = self.spans[-1][1] if self.spans else 0
        owner = [0] * n
        for index, (start, end) in enumerate(self.spans):
            for position in range(start, end):
                owner[position] = index
        return owner

    def atom_spans(self, char_spans: list[tuple[int, int, str | None]]) -> list[tuple[int, int, str | None]]:
        """Map (start, end, type) spans over characters to spans over atoms.

        A span boundary that falls inside an atom is moved to the atom's edge; spans
        that then overlap a previous one are dropped (the first one wins).
        """
        owner = self.char_to_atom()
        result: list[tuple[int, int, str | None]] = []
        covered_until = 0
        for start, end, label in char_spans:
            if end <= start:
                continue
            atom_start, atom_end = owner[start], owner[end - 1] + 1
            if atom_start < covered_until:
                if atom_end <= covered_until:
                    continue
                atom_start = covered_until
            result.append((atom_start, atom_end, label))
            covered_until = atom_end
        return result


def atomise(text: str) -> Atoms:
    """Split `text` into atoms; see the module docstring."""
    normal = "".join(normalise_char(c) for c in text)
    model_chars: list[str] = []
    spans: list[tuple[int, int]] = []
    i, n = 0, len(normal)
    while i < n:
        char = normal[i]
        start = i
        if char.isspace():
            while i < n and normal[i].isspace():
                i += 1
            model_chars.append(SPACE)
        elif _is_ascii_alnum(char):
            has_letter = False
            while i < n:
                c = normal[i]
                if _is_ascii_alnum(c):
                    has_letter = has_letter or c.isalpha()
                    i += 1
                elif c in ".," and i + 1 < n and normal[i + 1].isdigit() and normal[i - 1].isdigit():
                    i += 1  # 3.14, 1,000
                else:
                    break
            model_chars.append(LATIN if has_letter else NUMBER)
        else:
            i += 1
            model_chars.append(char)
        if not char.isspace():
            while i < n and not normal[i].isspace() and (_is_attached(normal[i]) or normal[i - 1] == _ZWJ):
                i += 1
        spans.append((start, i))
    return Atoms("".join(model_chars), tuple(spans))


def chunk_ranges(atoms: Atoms, max_len: int) -> list[tuple[int, int]]:
    """Atom ranges [start, end) to send to the model, at most `max_len` atoms each.

    Whitespace atoms are never inside a range. A range ends after sentence-final
    punctuation; a longer sentence is split after its last clause mark within the
    limit, and a sentence with none is cut at the limit. Every non-whitespace atom
    is in exactly one range.
    """
    ranges: list[tuple[int, int]] = []
    text = atoms.model_text
    start = 0
    n = len(text)

    def flush(end: int) -> None:
        nonlocal start
        while end - start > max_len:
            window = text[start : start + max_len]
            cut = max((k for k, c in enumerate(window) if c in CLAUSE_END), default=-1)
            cut = start + cut + 1 if cut >= 0 else start + max_len
            ranges.append((start, cut))
            start = cut
        if end > start:
            ranges.append((start, end))
        start = end

    for i in range(n):
        if text[i] == SPACE:
            flush(i)
            start = i + 1
        elif text[i] in SENTENCE_END:
            flush(i + 1)
    flush(n)
    return ranges
