"""Normalisation, atoms and chunking keep every offset pointing into the original text."""

from hypothesis import given
from hypothesis import strategies as st

from model.text import LATIN, NUMBER, SPACE, atomise, chunk_ranges, normalise_char

text_strategy = st.text(alphabet=st.sampled_from(list("北京大学，。！ \n\tabcAB12.,３４ＡＢ　😀\u200d👩\u0301é")), max_size=80) | st.text(max_size=60)


def test_full_width_becomes_half_width():
    assert "".join(normalise_char(c) for c in "ＩＢＭ１９９８，　") == "IBM1998, "


def test_latin_and_number_runs_are_single_atoms():
    atoms = atomise("iPhone售价5999.00元")
    assert atoms.model_text == f"{LATIN}售价{NUMBER}元"
    assert atoms.spans[0] == (0, 6)
    assert atoms.spans[3] == (8, 15)


def test_grapheme_with_zwj_and_combining_mark_is_one_atom():
    family = "👨\u200d👩\u200d👧"
    atoms = atomise(f"{family}e\u0301")
    assert atoms.spans == ((0, len(family)), (len(family), len(family) + 2))


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
