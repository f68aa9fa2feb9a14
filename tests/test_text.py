"""Normalisation, atoms and chunking keep every offset pointing into the original text."""

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from model.text import LATIN, NUMBER, SPACE, atomise, chunk_ranges, normalise

text_strategy = st.text(alphabet=st.sampled_from(list("北京大学，。！ \n\tabcAB12.,３４ＡＢ　😀\u200d👩\u0301é")), max_size=80) | st.text(
    max_size=60
)


def test_full_width_becomes_half_width():
    assert "".join(normalise(c) for c in "ＩＢＭ１９９８，　") == "IBM1998, "


def test_latin_and_number_runs_are_single_atoms():
    atoms = atomise("iPhone售价5999.00元")
    assert atoms.model_text == f"{LATIN}售价{NUMBER}元"
    assert atoms.spans[0] == (0, 6)
    assert atoms.spans[3] == (8, 15)


def test_grapheme_with_zwj_and_combining_mark_is_one_atom():
    family = "👨\u200d👩\u200d👧"
    atoms = atomise(f"{family}e\u0301")
    assert atoms.spans == ((0, len(family)), (len(family), len(family) + 2))


ZWJ = "\u200d"
# Characters at the edges of every rule: whitespace of several kinds, full-width forms,
# '.'/',' next to digits, non-ASCII digits (superscript, Arabic-Indic, circled), marks of
# each category (Mn, Mc, Me), variation selectors, skin tones, ZWJ.
EDGES = list("北京，。 \n\t\x1c\u3000\u2028aZ09.,:１Ａ，．²٣①\u0301\u0903\u20dd\ufe0f\ufe0e\U0001f3fb👩😀") + [ZWJ]
edge_text = st.text(alphabet=st.sampled_from(EDGES), max_size=40)


def is_attached(char: str) -> bool:
    """True for characters that belong to the previous grapheme."""
    if char in ("\ufe0e", "\ufe0f", ZWJ):
        return True
    if 0x1F3FB <= ord(char) <= 0x1F3FF:  # emoji skin-tone modifiers
        return True
    return unicodedata.category(char) in ("Mn", "Me", "Mc")


def is_ascii_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


def reference_atomise(text: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The atom rules stated character by character (the first implementation): the oracle."""
    normal = "".join(normalise(c) for c in text)
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
        elif is_ascii_alnum(char):
            has_letter = False
            while i < n:
                c = normal[i]
                if is_ascii_alnum(c):
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
            while i < n and not normal[i].isspace() and (is_attached(normal[i]) or normal[i - 1] == ZWJ):
                i += 1
        spans.append((start, i))
    return "".join(model_chars), tuple(spans)


@given(edge_text | text_strategy)
def test_atomise_follows_the_rules_character_by_character(text):
    atoms = atomise(text)
    assert (atoms.model_text, atoms.spans) == reference_atomise(text)


@given(text_strategy)
def test_atoms_tile_the_text(text):
    atoms = atomise(text)
    assert len(atoms.model_text) == len(atoms.spans)
    position = 0
    for start, end in atoms.spans:
        assert start == position and end > start
        position = end
    assert position == len(text)


@given(text_strategy, st.integers(1, 12))
def test_chunks_cover_every_non_space_atom_once(text, max_len):
    atoms = atomise(text)
    ranges = chunk_ranges(atoms, max_len)
    seen = [k for start, end in ranges for k in range(start, end)]
    assert seen == [k for k, c in enumerate(atoms.model_text) if c != SPACE]
    assert all(0 < end - start <= max_len for start, end in ranges)


def test_chunks_end_at_sentence_punctuation():
    # the model sees half-width forms
    atoms = atomise("你好。我很好！谢谢")
    assert [atoms.model_text[s:e] for s, e in chunk_ranges(atoms, 100)] == ["你好。", "我很好!", "谢谢"]


def test_long_sentence_is_split_after_a_comma():
    atoms = atomise("一二三，四五六七八")
    assert [atoms.model_text[s:e] for s, e in chunk_ranges(atoms, 6)] == ["一二三,", "四五六七八"]


def test_atom_spans_move_boundaries_inside_an_atom_to_its_edge():
    atoms = atomise("MP3播放器")  # one LATIN atom for "MP3"
    assert atoms.atom_spans([(0, 2, "x"), (2, 3, "m"), (3, 6, "n")]) == [(0, 1, "x"), (1, 4, "n")]


def test_whitespace_after_zwj_stays_a_space_atom():
    atoms = atomise("中\u200d 文")
    assert atoms.model_text == "中 文" and atoms.spans == ((0, 2), (2, 3), (3, 4))
