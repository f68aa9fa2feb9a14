"""Corpus readers, their error messages and the fixed splits."""

import pytest

from training.corpora import CorpusError, load_corpus, read_char_tags, read_segmented, read_word_pos


def test_word_pos_reader(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("迈向/v  充满/v  希望/n\n\n江/nr 泽民/nr\n", encoding="utf-8")
    examples = read_word_pos(path)
    assert [e.text for e in examples] == ["迈向充满希望", "江泽民"]
    assert examples[0].words == [(0, 2, "v"), (2, 4, "v"), (4, 6, "n")]


def test_word_pos_reader_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("迈向/v\n充满 希望/n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.txt:2: expected word/POS .*'充满'"):
        read_word_pos(path)


def test_segmented_reader(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("北京 大学\n", encoding="utf-8")
    assert read_segmented(path)[0].words == [(0, 2, None), (2, 4, None)]


def test_char_tags_reader_bmes_and_bio(tmp_path):
    path = tmp_path / "n.txt"
    path.write_text("张 B-PER\n三 E-PER\n在 O\n京 S-LOC\n\n上 B-LOC\n海 I-LOC\n市 I-LOC\n", encoding="utf-8")
    first, second = read_char_tags(path)
    assert first.text == "张三在京" and first.entities == [(0, 2, "PER"), (3, 4, "LOC")]
    assert second.entities == [(0, 3, "LOC")]


@pytest.mark.parametrize("line,expected", [("张三 B-PER", "one character"), ("张 X-PER", "a tag O or B/M/E/S/I-TYPE"), ("张", "one character")])
def test_char_tags_reader_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "n.txt"
    path.write_text(f"在 O\n{line}\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"n\.txt:2: expected {expected}"):
        read_char_tags(path)


def test_pd98_split_is_by_line_order():
    train, dev, test = (load_corpus(f"pd98-{s}") for s in ("train", "dev", "test"))
    total = len(train) + len(dev) + len(test)
    assert total == 19484
    assert len(train) == int(total * 0.85) and len(train) + len(dev) == int(total * 0.90)
    assert train[0].text.startswith("迈向充满希望的新世纪")


def test_msra_split():
    train, dev, test = (load_corpus(f"msra-{s}") for s in ("train", "dev", "test"))
    assert len(train) + len(dev) == 50289
    assert len(dev) == 50289 // 20
    assert len(test) == 5000
    kinds = {span[2] for e in test for span in e.entities}
    assert kinds == {"PER", "LOC", "ORG"}


def test_unknown_corpus_name():
    with pytest.raises(CorpusError, match="neither a corpus name"):
        load_corpus("no-such-corpus")
