"""Corpus readers, their error messages and the fixed splits."""

import json
import logging

import pytest

from training.corpora import ENTITY_TYPE_MAPS, CorpusError, load_corpus, read_char_tags, read_cluener, read_segmented, read_word_pos


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


def test_cluener_reader_inclusive_ends_and_type_mapping(tmp_path):
    path = tmp_path / "c.json"
    record = {"text": "浙商银行叶老桂在杭州西湖区玩CSOL", "label": {"company": {"浙商银行": [[0, 3]]}, "name": {"叶老桂": [[4, 6]]}, "address": {"杭州西湖区": [[8, 12]]}, "game": {"CSOL": [[14, 17]]}}}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    [example] = read_cluener(path)
    assert example.entities == [(0, 4, "ORG"), (4, 7, "PER"), (8, 13, "LOC")]  # end-exclusive; game is not an entity
    assert all(example.text[s:e] in ("浙商银行", "叶老桂", "杭州西湖区") for s, e, _ in example.entities)


def test_cluener_reader_reports_bad_lines_and_goes_on(tmp_path, caplog):
    path = tmp_path / "c.json"
    good = json.dumps({"text": "叶老桂认为", "label": {"name": {"叶老桂": [[0, 2]]}}}, ensure_ascii=False)
    shifted = json.dumps({"text": "叶老桂认为", "label": {"name": {"叶老桂": [[1, 3]]}}}, ensure_ascii=False)
    path.write_text(f"{good}\nnot json\n{shifted}\n{good}\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="training.corpora"):
        examples = read_cluener(path)
    assert len(examples) == 2
    assert "c.json:2: expected a CLUENER record" in caplog.text
    assert "c.json:3: expected a CLUENER record" in caplog.text and "'叶老桂' at [1, 3]" in caplog.text


def test_char_tags_reader_crlf_malformed_line_and_type_map(tmp_path, caplog):
    """Resume's facts: CRLF line endings, a line whose character is missing ('-NAME'), a
    sentence that begins inside an ORG, types beyond PER/LOC/ORG."""
    path = tmp_path / "train.char.bmes"
    lines = ["常 B-NAME", "建 E-NAME", "， O", "", "上 B-ORG", "-NAME", "汽 E-ORG", "", "司 M-ORG", "长 E-ORG", "工 B-PRO", "科 E-PRO", ""]
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    with caplog.at_level(logging.WARNING, logger="training.corpora"):
        examples = read_char_tags(path, ENTITY_TYPE_MAPS["resume"], skip_malformed=True)
    assert [e.text for e in examples] == ["常建，", "司长工科"]
    assert examples[0].entities == [(0, 2, "PER")]
    assert examples[1].entities == [(0, 2, "ORG")]  # PRO is not an entity
    assert "train.char.bmes:6: expected one character" in caplog.text and "skipped" in caplog.text
    with pytest.raises(CorpusError, match=r"train\.char\.bmes:6"):
        read_char_tags(path)


def test_cluener_and_resume_splits():
    train, dev, test = (load_corpus(f"cluener-{s}") for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (9673, 1075, 1343)
    assert sum(len(e.entities) for e in test) == 1830
    resume = {s: load_corpus(f"resume-{s}") for s in ("train", "dev", "test")}
    assert (len(resume["train"]), len(resume["dev"]), len(resume["test"])) == (3820, 463, 477)  # one malformed training sentence dropped
    assert sum(len(e.entities) for e in resume["test"]) == 671
    assert {span[2] for e in train + resume["train"] for span in e.entities} == {"PER", "LOC", "ORG"}


def test_missing_data_folder_says_where_to_point(tmp_path):
    with pytest.raises(CorpusError, match="NER_DATA_DIR"):
        load_corpus("cluener-dev", data=tmp_path)
