"""User dictionaries whose entries hold (model/user_dict.py), in the Tagger and through `ner-tag`."""

import json
import subprocess
import sys

import jieba
import jieba.posseg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.lexicon import Lexicon
from model.tagger import Entity, Tagger, Token, merge_names
from model.user_dict import DictEntry, UserDictionary, UserDictionaryError
from training.corpora import load_corpus

# The issue's dictionary and sentences (a new user's first try), then entries of our own that
# occur in msra-test.
ISSUE_DICT = "字节跳动 1000 nt\n抖音 1000 nz\n顺丰 1000 nt\n特斯拉 1000 nt\n淘宝 1000 nz\n余承东 1000 nr\n"
ISSUE_SENTENCES = [
    "B站UP主老番茄和字节跳动旗下的抖音签了独家合约。",
    "我昨天在淘宝上买了一双耐克的鞋，今天顺丰就送到了杭州。",
    "马斯克宣布特斯拉将在上海临港新建一座储能超级工厂。",
    "华为在深圳发布了Mate 70手机，余承东出席发布会。",
]
OWN_DICT = "人民大会堂 ns\n克林顿 nr\n新华社 nt\n江泽民 nr\n国务院 10 nt\n联合国 nt\n香港特别行政区 nt\n"
OWN_SENTENCES = ["字节跳动的抖音和快手都在北京。", "淘宝、天猫和京东在双十一前夕打起了价格战。", "记者从顺丰速运获悉，特斯拉的车由顺丰运到了余承东的办公室。"]
EXPECTED_TYPE = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


@pytest.fixture(scope="module")
def own_jieba():
    """A jieba tokenizer of the module's own, so that user words do not reach other tests."""
    return jieba.posseg.POSTokenizer(jieba.Tokenizer())


@pytest.fixture(scope="module")
def tagger(shipped_bundle, own_jieba):
    """The shipped bundle at the service's default precision (int8)."""
    return Tagger.load(shipped_bundle, "cpu", Lexicon(own_jieba), precision="int8")


@pytest.fixture
def with_dictionary(tagger, tmp_path):
    def use(text: str, forced: bool = True) -> UserDictionary:
        path = tmp_path / "user.txt"
        path.write_text(text, encoding="utf-8")
        return tagger.load_dictionary(path, forced)

    yield use
    tagger.use_dictionary(UserDictionary())


def msra_sentences_with(words: list[str], per_word: int = 5) -> list[str]:
    texts = [example.text for example in load_corpus("msra-test")]
    chosen: list[str] = []
    for word in words:
        chosen += [text for text in texts if word in text and text not in chosen][:per_word]
    return chosen


def assert_entries_hold(result, user_dict: UserDictionary) -> int:
    """Every occurrence of an entry (leftmost-longest) is one token with its POS and, for nr/ns/nt,
    one entity of the implied type; returns how many occurrences were checked."""
    tokens = {(token.start, token.end): token for token in result.tokens}
    entities = {(entity.start, entity.end): entity for entity in result.entities}
    matches = user_dict.matches(result.text)
    for match in matches:
        token = tokens.get((match.start, match.end))
        assert token is not None, f"{match.entry.word} is not one token in {result.text}: {[t.text for t in result.tokens]}"
        assert token.pos == match.entry.pos
        span = (match.start, match.end)
        if match.entry.pos in EXPECTED_TYPE:
            assert span in entities and entities[span].type == EXPECTED_TYPE[match.entry.pos], f"{match.entry.word} in {result.text}: {result.entities}"
        else:  # any other POS: not an entity, nor part of one
            assert not any(e.start < match.end and match.start < e.end for e in result.entities), f"{match.entry.word} in {result.text}: {result.entities}"
    return len(matches)


def test_the_issue_dictionary_holds(tagger, with_dictionary):
    user_dict = with_dictionary(ISSUE_DICT)
    results = tagger.tag(ISSUE_SENTENCES + OWN_SENTENCES)
    assert sum(assert_entries_hold(result, user_dict) for result in results) == 6 + 7
    # The issue's acceptance, spelled out
    first, second, third, fourth = results[:4]
    assert ("字节跳动", "ORG") in [(e.text, e.type) for e in first.entities]
    assert ("抖音", "nz") in [(t.text, t.pos) for t in first.tokens]
    assert ("淘宝", "nz") in [(t.text, t.pos) for t in second.tokens] and ("顺丰", "ORG") in [(e.text, e.type) for e in second.entities]
    assert ("特斯拉", "ORG") in [(e.text, e.type) for e in third.entities]
    assert ("余承东", "PER") in [(e.text, e.type) for e in fourth.entities]


def test_own_entries_hold_in_msra_sentences(tagger, with_dictionary):
    user_dict = with_dictionary(OWN_DICT)
    sentences = msra_sentences_with([entry.word for entry in user_dict.entries.values()])
    assert len(sentences) >= 25
    checked = sum(assert_entries_hold(result, user_dict) for result in tagger.tag(sentences))
    assert checked >= len(sentences)


def test_per_call_entries_win_over_the_dictionary(tagger, with_dictionary):
    with_dictionary("特斯拉 nt\n")
    [result] = tagger.tag(["特斯拉的股价涨了。"], extra_entries=[DictEntry.make("特斯拉", pos="nz")], report_dictionary=True)
    assert ("特斯拉", "nz") in [(t.text, t.pos) for t in result.tokens] and not result.entities
    assert [(hit.text, hit.pos, hit.type) for hit in result.dictionary] == [("特斯拉", "nz", "O")]


def test_a_tag_outside_the_model_set_is_given_as_it_is(tagger, with_dictionary):
    with_dictionary("老番茄 nrfg\n双十一 festival\n")
    [result] = tagger.tag(["老番茄在双十一买了很多东西。"])
    assert ("老番茄", "nrfg") in [(t.text, t.pos) for t in result.tokens] and ("老番茄", "PER") in [(e.text, e.type) for e in result.entities]
    assert ("双十一", "festival") in [(t.text, t.pos) for t in result.tokens]


def test_overlapping_entries_leftmost_then_longest(tagger, with_dictionary):
    user_dict = with_dictionary("字节跳动 nt\n跳动旗下 n\n字节 n\n")
    [result] = tagger.tag(["B站UP主老番茄和字节跳动旗下的抖音签了独家合约。"])
    assert [m.entry.word for m in user_dict.matches(result.text)] == ["字节跳动"]
    words = [t.text for t in result.tokens]
    assert "字节跳动" in words and "跳动旗下" not in words and "字节" not in words


def test_features_mode_only_nudges(tagger, with_dictionary):
    with_dictionary("余承东 nr\n", forced=False)
    assert len(tagger.user_dict) == 0  # nothing forced, the words are in the dictionary features
    [result] = tagger.tag([ISSUE_SENTENCES[3]], report_dictionary=True)
    assert result.dictionary == []


def test_without_a_dictionary_outputs_are_unchanged(tagger, with_dictionary, shipped_bundle):
    sentences = msra_sentences_with(["克林顿", "新华社"]) + ISSUE_SENTENCES
    fresh = Tagger.load(shipped_bundle, "cpu", Lexicon(jieba.posseg.POSTokenizer(jieba.Tokenizer())), precision="int8")
    before = [r.to_dict() for r in fresh.tag(sentences)]
    with_dictionary(ISSUE_DICT + OWN_DICT)
    tagger.use_dictionary(UserDictionary())  # and removed again: jieba's own words restored
    assert [r.to_dict() for r in tagger.tag(sentences)] == before


def test_fp32_forces_the_same(shipped_bundle, tmp_path, own_jieba):
    """The fp32 network, exported before `forced` existed, is scripted again with it at load."""
    path = tmp_path / "user.txt"
    path.write_text(ISSUE_DICT, encoding="utf-8")
    fp32 = Tagger.load(shipped_bundle, "cpu", Lexicon(jieba.posseg.POSTokenizer(jieba.Tokenizer())))
    user_dict = fp32.load_dictionary(path)
    for result in fp32.tag(ISSUE_SENTENCES):
        assert_entries_hold(result, user_dict)


def test_file_format_and_rejected_lines(tmp_path):
    path = tmp_path / "user.txt"
    path.write_text("\ufeff# comment\n\n字节跳动 1000 nt\n抖音 nz\n老番茄 PER\n某词\n坏 行 有 太多 字段\n词 10 Xx\n顺丰 5 nt O\n王小二 nrfg\n", encoding="utf-8")
    user_dict = UserDictionary.read(path)
    assert user_dict.entries == {
        "字节跳动": DictEntry("字节跳动", 1000, "nt", "ORG"),
        "抖音": DictEntry("抖音", None, "nz", "O"),
        "老番茄": DictEntry("老番茄", None, None, "PER"),
        "某词": DictEntry("某词"),
        "顺丰": DictEntry("顺丰", 5, "nt", "O"),
        "王小二": DictEntry("王小二", None, "nrfg", "PER"),
    }
    assert [(r.line_number, r.line) for r in user_dict.rejected] == [(7, "坏 行 有 太多 字段"), (8, "词 10 Xx")]
    assert "word [freq] [pos] [type]" in user_dict.rejected[0].reason
    with pytest.raises(UserDictionaryError, match="nowhere.txt"):
        UserDictionary.read(tmp_path / "nowhere.txt")


def test_matches_full_width_text_at_its_offsets():
    user_dict = UserDictionary([DictEntry.make("B站", pos="nz")])
    assert [(m.start, m.end) for m in user_dict.matches("在Ｂ站看，又在B站看")] == [(1, 3), (7, 9)]


def test_whole_names_merge_tokens_of_a_person(tagger):
    text = "我们要按照江泽民同志的要求做。"
    [split] = tagger.tag([text])
    [whole] = tagger.tag([text], whole_names=True)
    assert [t.text for t in split.tokens][3:5] == ["江", "泽民"]  # the People's Daily convention
    assert ("江泽民", "nr") in [(t.text, t.pos) for t in whole.tokens]
    assert "".join(t.text for t in whole.tokens) == text and whole.entities == split.entities


def test_merge_names_leaves_names_that_cut_a_token():
    tokens = [Token("老", 0, 1, "a"), Token("王小", 1, 3, "nr"), Token("二", 3, 4, "m")]
    assert merge_names(tokens, [Entity("王小二", "PER", 1, 4)], "nr") == [tokens[0], Token("王小二", 1, 4, "nr")]
    assert merge_names(tokens, [Entity("老王", "PER", 0, 2)], "nr") == tokens  # ends inside 王小


def test_ner_tag_cli_with_user_dict(tmp_path):
    path = tmp_path / "user.txt"
    path.write_text(ISSUE_DICT, encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "app.cli", "--user-dict", str(path), *ISSUE_SENTENCES], capture_output=True, text=True, check=True)
    results = [json.loads(line) for line in run.stdout.splitlines()]
    entities = {(e["text"], e["type"]) for r in results for e in r["entities"]}
    tokens = {(t["text"], t["pos"]) for r in results for t in r["tokens"]}
    assert {("字节跳动", "ORG"), ("顺丰", "ORG"), ("特斯拉", "ORG"), ("余承东", "PER")} <= entities
    assert {("抖音", "nz"), ("淘宝", "nz"), ("字节跳动", "nt")} <= tokens
    assert "6 entries (forced), 0 rejected lines" in run.stderr


WORDS = ["字节", "字节跳动", "跳动", "跳动旗下", "抖音", "音乐", "B站", "站", "节"]
entries_of = st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(["nz", "nt", "n"])), max_size=5).map(lambda pairs: [DictEntry.make(w, pos=p) for w, p in pairs])


@settings(max_examples=200, deadline=None)
@given(entries_of, entries_of, st.lists(st.sampled_from([*WORDS, "的", "Ｂ站"]), max_size=10).map("".join))
def test_a_requests_entries_match_as_if_merged_into_the_dictionary(file_entries, request_entries, text):
    """Per-request entries are matched beside the file's dictionary (not merged into a copy of
    it per request), with the same result as one merged dictionary: longest match across both,
    the request's entry winning for the same word."""
    file_dict, request_dict = UserDictionary(file_entries), UserDictionary(request_entries)
    merged = UserDictionary([*file_dict.entries.values(), *request_dict.entries.values()])
    assert file_dict.matches(text, request_dict) == merged.matches(text)
    assert file_dict.matches(text, None) == file_dict.matches(text)
