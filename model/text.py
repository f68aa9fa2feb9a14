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

import functools
import re
import string
import unicodedata
from dataclasses import dataclass

LATIN = "\ue000"  # placeholder for a run of Latin letters (digits may follow)
NUMBER = "\ue001"  # placeholder for a run of digits, with inner '.' or ','
SPACE = " "  # a run of whitespace

# Sentence-final marks: a chunk may end after any of them.
SENTENCE_END = set("。！？!?；;…")
# Clause marks: used to split a sentence that is longer than the model's maximum.
CLAUSE_END = set("，,、：:）)」』》")
# A sentence: atoms up to and including a sentence-final mark, or up to whitespace or the end.
_SENTENCE_END_CLASS = "".join(map(re.escape, sorted(SENTENCE_END)))
_SENTENCE = re.compile(f"[^{SPACE}{_SENTENCE_END_CLASS}]*[{_SENTENCE_END_CLASS}]|[^{SPACE}{_SENTENCE_END_CLASS}]+")

# Full-width ASCII (U+FF01..U+FF5E) and the ideographic space to half-width: 1:1 per character.
_HALF_WIDTH = {chr(code): chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)} | {"\u3000": " "}
_FULL_WIDTH = re.compile("[\uff01-\uff5e\u3000]")


def normalise(text: str) -> str:
    """Full-width ASCII and U+3000 to half-width; everything else unchanged (1:1 per character,
    so offsets into the result are offsets into `text`)."""
    # Replacing the few full-width characters a text has took half the time of str.translate,
    # which looks every character up (msra-test and pd98-test).
    return _FULL_WIDTH.sub(_half_width, text)


def _half_width(match: re.Match) -> str:
    return _HALF_WIDTH[match.group()]


@functools.cache
def _class_table() -> str:
    """For every code point, the letter of its class in _ATOM (built on first use, ~0.5 s).

    s whitespace; a ASCII letter; d ASCII digit; p '.' or ','; u another digit (isdigit);
    m attached to the previous character: combining marks (Mn, Mc, Me), variation
    selectors, emoji skin-tone modifiers; z ZWJ; o anything else.
    """
    table = bytearray(b"o" * 0x110000)
    for code in range(0x110000):
        char = chr(code)
        if char.isspace():
            table[code] = ord("s")
        elif char.isdigit():
            table[code] = ord("u")
        elif unicodedata.category(char) in ("Mn", "Mc", "Me") or code in (0xFE0E, 0xFE0F) or 0x1F3FB <= code <= 0x1F3FF:
            table[code] = ord("m")
    for chars, letter in ((string.ascii_letters, "a"), (string.digits, "d"), (".,", "p"), ("\u200d", "z")):
        for char in chars:
            table[ord(char)] = ord(letter)
    return table.decode("ascii")


# One atom per match, over the class letters of the normalised text. Group 1: a whitespace
# run. Group 2: plain characters, one atom each (nothing attached to the last one). Group 3:
# ASCII letters/digits, with '.' or ',' inside between a digit and a digit (3.14, 1,000).
# Otherwise one character. A non-space atom takes along what is attached to it and
# whatever follows a ZWJ.
_ATOM = re.compile(r"(s+)|(o+)(?![mz])|(?:([ad]+(?:(?<=d)p(?=[du])[ad]*)*)|.)(?:[mz]|(?<=z)[^s])*", re.S)


@dataclass(frozen=True)
class Atoms:
    """The model string of a text and where each atom lies in the original text: atoms tile
    the text, so atom k is text[bounds[k]:bounds[k + 1]]. `bounds` is None when every atom is
    one character (most texts), so that tagging them builds no per-character Python objects."""

    model_text: str
    bounds: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.model_text)

    @functools.cached_property
    def spans(self) -> tuple[tuple[int, int], ...]:
        """Each atom's (start, end) in the original text."""
        if self.bounds is None:
            return tuple(zip(range(len(self.model_text)), range(1, len(self.model_text) + 1)))
        return tuple(zip(self.bounds, self.bounds[1:]))

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
    normal = normalise(text)
    classes = normal.translate(_class_table())
    if not classes.strip("o"):  # plain characters only: one atom each
        return Atoms(normal)
    model_chars: list[str] = []
    bounds = [0]
    for match in _ATOM.finditer(classes):
        space, plain, run = match.group(1, 2, 3)
        start, end = match.span()
        if plain:
            model_chars.append(normal[start:end])
            bounds.extend(range(start + 1, end + 1))
            continue
        if space:
            model_chars.append(SPACE)
        elif run:
            model_chars.append(LATIN if "a" in run else NUMBER)
        else:
            model_chars.append(normal[start])
        bounds.append(end)
    model_text = "".join(model_chars)
    return Atoms(model_text, None if len(model_text) == len(text) else tuple(bounds))


def chunk_ranges(atoms: Atoms, max_len: int) -> list[tuple[int, int]]:
    """Atom ranges [start, end) to send to the model, at most `max_len` atoms each.

    Whitespace atoms are never inside a range. A range ends after sentence-final
    punctuation; a longer sentence is split after its last clause mark within the
    limit, and a sentence with none is cut at the limit. Every non-whitespace atom
    is in exactly one range.
    """
    text = atoms.model_text
    ranges: list[tuple[int, int]] = []
    for sentence in _SENTENCE.finditer(text):
        start, end = sentence.span()
        while end - start > max_len:
            window = text[start : start + max_len]
            cut = max(map(window.rfind, CLAUSE_END))  # -1: no clause mark, cut at the limit
            cut = start + cut + 1 if cut >= 0 else start + max_len
            ranges.append((start, cut))
            start = cut
        ranges.append((start, end))
    return ranges
