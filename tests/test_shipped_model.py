"""The shipped default bundle: offsets, recorded accuracy, hand-checked sentences, user words."""

import httpx
import jieba
import jieba.posseg
import pytest

import model.crf
import model.network
from model.artifact import eager_copy, load_bundle, read_metadata
from model.lexicon import Lexicon
from model.tagger import Tagger
from tests.conftest import run_server
from training.corpora import load_corpus
from training.evaluate import sample, score
from training.model_card import SAMPLE_CORPORA, SAMPLE_SIZE, render_card

# Not in jieba's dictionary nor in the training data, and split by the shipped model without a
# user dictionary (氪晶猫爪藤, used before, is read as one word since LAC's rarer characters joined
# the vocabulary: 氪 and 晶 are no longer <unk>).
INVENTED_WORD = "云杉鹿角蕨"


@pytest.fixture(scope="module")
def tagger(shipped_bundle):
    return Tagger.load(shipped_bundle, "cpu")


@pytest.fixture(scope="module")
def fp16_tagger(shipped_bundle):
    """The GPU option, run on the CPU: the same half-precision arithmetic, only slower."""
    return Tagger.load(shipped_bundle, "cpu", precision="fp16")


def test_the_model_card_says_what_the_bundle_and_the_recipes_page_hold(shipped_bundle):
    """MODEL_CARD.md is written from metadata.json and docs/ner-recipes.md; it had fallen behind
    the recipes page once (`python -m training.model_card --recorded` writes it again)."""
    card = (shipped_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card == render_card(read_metadata(shipped_bundle)), "MODEL_CARD.md is stale: python -m training.model_card --recorded"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("corpus", SAMPLE_CORPORA)
def test_sample_figures_match_the_model_card(request, shipped_bundle, corpus, precision):
    tagger = request.getfixturevalue("tagger" if precision == "fp32" else "fp16_tagger")
    assert tagger.precision == precision
    recorded = read_metadata(shipped_bundle).evaluation[f"{corpus}-sample{SAMPLE_SIZE}"]["model"]
    examples = sample(load_corpus(corpus), SAMPLE_SIZE)
    measured = score(examples, tagger.tag([e.text for e in examples]))
    for task in ("seg", "pos", "ner"):
        if task in recorded:
            assert abs(measured[task]["f1"] - recorded[task]["f1"]) <= 0.01, (task, measured[task]["f1"], recorded[task]["f1"])


def test_the_gpu_decoder_gives_the_shipped_models_answers(shipped_bundle, tagger, monkeypatch):
    """On a GPU the network decodes with scan_viterbi (model/crf.py); here it runs on the CPU
    in an eager copy of the shipped network, on fixed samples of msra-test and pd98-test."""
    texts = [e.text for corpus in ("msra-test", "pd98-test") for e in sample(load_corpus(corpus), 150)]
    expected = [result.to_dict() for result in tagger.tag(texts)]
    scan_tagger = Tagger.load(shipped_bundle, "cpu")
    scan_tagger.network = eager_copy(*load_bundle(shipped_bundle))
    monkeypatch.setattr(model.crf, "viterbi", model.crf.scan_viterbi)
    monkeypatch.setattr(model.network, "viterbi", model.crf.scan_viterbi)
    assert [result.to_dict() for result in scan_tagger.tag(texts)] == expected


def test_offsets_on_test_sentences(tagger):
    texts = [e.text for e in sample(load_corpus("pd98-test"), 200, seed=1)] + ["  混合 text，ｆｕｌｌ　width １２３ and emoji 😀。\n"]
    for result in tagger.tag(texts):
        position = 0
        for token in result.tokens:
            assert token.start == position and result.text[token.start : token.end] == token.text
            position = token.end
        assert position == len(result.text)
        for entity in result.entities:
            assert result.text[entity.start : entity.end] == entity.text


@pytest.mark.parametrize(
    "text,entities",
    [
        ("国务院总理李鹏今天在北京会见了日本客人。", {("李鹏", "PER"), ("北京", "LOC"), ("日本", "LOC"), ("国务院", "ORG")}),
        ("中国人民银行发布了新的利率政策。", {("中国人民银行", "ORG")}),
        ("江泽民在中南海会见了美国总统克林顿。", {("江泽民", "PER"), ("中南海", "LOC"), ("美国", "LOC"), ("克林顿", "PER")}),
        # modern text: companies, people and places the 1998 corpora never saw
        ("马云在杭州创办了阿里巴巴。", {("马云", "PER"), ("杭州", "LOC"), ("阿里巴巴", "ORG")}),
        ("余承东是华为的高管。", {("余承东", "PER"), ("华为", "ORG")}),
        ("周杰伦在台北开了演唱会。", {("周杰伦", "PER"), ("台北", "LOC")}),
        # Latin words are not names because they are Latin (the issue's `hello` and `ok` as ORG;
        # run L, tied with the shipped model on dev, tagged all three as ORG and was not shipped)
        ("hello", set()),
        ("他说ok。", set()),
        ("hello world", set()),
    ],
)
def test_hand_checked_entities(tagger, text, entities):
    [result] = tagger.tag([text])
    assert {(e.text, e.type) for e in result.entities} == entities


def test_hand_checked_segmentation_and_pos(tagger):
    [result] = tagger.tag(["中国人民银行发布了新的利率政策。"])
    assert [(t.text, t.pos) for t in result.tokens] == [
        ("中国", "ns"), ("人民", "n"), ("银行", "n"), ("发布", "v"), ("了", "u"), ("新", "a"), ("的", "u"), ("利率", "n"), ("政策", "n"), ("。", "w"),
    ]


def test_user_dictionary_joins_an_invented_word(shipped_bundle, tmp_path):
    text = f"他买了一盆{INVENTED_WORD}。"
    plain = Tagger.load(shipped_bundle, "cpu", Lexicon(jieba.posseg.POSTokenizer(jieba.Tokenizer())))
    assert INVENTED_WORD not in [t.text for t in plain.tag([text])[0].tokens]
    user_dict = tmp_path / "user.txt"
    user_dict.write_text(f"{INVENTED_WORD} 100000 n\n", encoding="utf-8")
    with run_server(shipped_bundle, tmp_path, {"NER_USER_DICT": str(user_dict)}) as server:
        body = httpx.post(f"{server.url}/tag", json={"text": text}, timeout=30).json()
        assert INVENTED_WORD in [t["text"] for t in body["results"][0]["tokens"]]
        assert httpx.get(f"{server.url}/model").json()["user_dictionary"]["entries"] == 1
