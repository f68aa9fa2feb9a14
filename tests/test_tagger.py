"""The Tagger API on a tiny trained bundle: offsets, odd inputs, user words, bundle errors."""

import dataclasses
import json
import shutil

import jieba
import jieba.posseg
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.artifact import BundleError, read_metadata
from model.lexicon import Lexicon
from model.tagger import DeviceError, Tagger
from model.user_dict import DictEntry
from model.vocab import BOS, PAD, UNK, Vocab
from tests.conftest import ROOT
from tests.test_lexicon import dictionary_features
from training.config import TrainConfig
from training.train import train


@pytest.fixture(scope="module")
def tagger(tiny_bundle):
    return Tagger.load(tiny_bundle, "cpu")


def assert_offsets(result):
    position = 0
    for token in result.tokens:
        assert token.start == position, "tokens must tile the text in order"
        assert result.text[token.start : token.end] == token.text
        position = token.end
    assert position == len(result.text)
    for entity in result.entities:
        assert result.text[entity.start : entity.end] == entity.text
        assert entity.type in ("PER", "LOC", "ORG")


ODD_TEXTS = ["", " ", "\n\t ", "a", "。", "iPhone 15 Pro售价7999元", "３．１４ｋｇ", "😀👨\u200d👩\u200d👧🇨🇳", "e\u0301\u0301", "مرحبا 你好", "\x00\x01", "臺灣的學生", "！？。，", "字" * 1000]


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_odd_texts_give_valid_offsets(tagger, text):
    [result] = tagger.tag([text])
    assert_offsets(result)


def test_whitespace_is_its_own_token(tagger):
    [result] = tagger.tag(["北京 上海"])
    assert [t.text for t in result.tokens if t.text.isspace()] == [" "]


def test_latin_words_and_numbers_are_not_split(tagger):
    [result] = tagger.tag(["iPhone 15售价5999.00元"])
    texts = [t.text for t in result.tokens]
    assert "iPhone" in texts
    assert any("5999.00" in t for t in texts)


def test_long_text_is_chunked_without_loss(tagger):
    text = "中共中央总书记、国家主席江泽民发表新年讲话，" * 40 + "完"
    [result] = tagger.tag([text], batch_size=4)
    assert_offsets(result)
    assert tagger.max_len < len(text)


def test_batching_does_not_change_results(tagger):
    texts = ["江泽民在北京。", "上海很大", "" , "新华社记者报道。" * 3]
    one_by_one = [tagger.tag([t])[0].to_dict() for t in texts]
    assert [r.to_dict() for r in tagger.tag(texts, batch_size=2)] == one_by_one


def test_task_subsets(tagger):
    [seg_only] = tagger.tag(["江泽民在北京。"], tasks=["seg"])
    assert seg_only.tokens and all(t.pos is None for t in seg_only.tokens) and seg_only.entities == []
    [ner_only] = tagger.tag(["江泽民在北京。"], tasks=["ner"])
    assert ner_only.tokens == []
    with pytest.raises(ValueError, match="unknown task"):
        tagger.tag(["x"], tasks=["parse"])


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120))
def test_any_unicode_text_is_covered(tagger, text):
    [result] = tagger.tag([text])
    assert_offsets(result)


def test_user_words_flow_into_dictionary_features():
    import jieba

    lexicon = Lexicon(jieba.posseg.POSTokenizer(jieba.Tokenizer()))
    word = "氪金猫爪"
    before = dictionary_features(lexicon, [word])[0][0]
    lexicon.set_user_words([DictEntry.make(word, 2000, "nz")])
    after = dictionary_features(lexicon, [word])[0][0]
    assert before[0, 2] == 0 and after[0, 2] > 0  # B role, length bucket 4
    lexicon.set_user_words([])  # replaced by an empty dictionary: gone again
    assert (dictionary_features(lexicon, [word])[0][0] == before).all()


def test_user_words_replaced_give_jieba_its_own_words_back():
    import jieba

    pos_tokenizer = jieba.posseg.POSTokenizer(jieba.Tokenizer())
    lexicon = Lexicon(pos_tokenizer)
    own = (pos_tokenizer.tokenizer.FREQ["北京"], pos_tokenizer.word_tag_tab["北京"])
    features = dictionary_features(lexicon, ["北京大学"])[0][0]
    lexicon.set_user_words([DictEntry.make("北京", 1, "nz")])
    assert (pos_tokenizer.tokenizer.FREQ["北京"], pos_tokenizer.word_tag_tab["北京"]) == (1, "nz")
    lexicon.set_user_words([DictEntry.make("大学城", 5)])
    assert (pos_tokenizer.tokenizer.FREQ["北京"], pos_tokenizer.word_tag_tab["北京"]) == own
    lexicon.set_user_words([])
    assert (dictionary_features(lexicon, ["北京大学"])[0][0] == features).all()


def test_missing_bundle_names_the_folder(tmp_path):
    with pytest.raises(BundleError, match="no such folder"):
        Tagger.load(tmp_path / "nowhere")


def test_corrupt_network_names_the_file(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / "network.pt").write_bytes(b"not a torchscript file")
    with pytest.raises(BundleError, match=r"network\.pt: corrupt"):
        Tagger.load(copy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_cuda_without_a_gpu_says_so_not_that_the_bundle_is_corrupt(tiny_bundle):
    """NER_DEVICE=cuda where torch sees no GPU (a CUDA image run without --gpus, a CPU build)
    was reported as 'network.pt: corrupt ... restore the bundle or retrain it'."""
    with pytest.raises(DeviceError, match=r"no CUDA device.*NER_DEVICE=auto or cpu") as refusal:
        Tagger.load(tiny_bundle, "cuda")
    assert "corrupt" not in str(refusal.value)


def test_wrong_format_version_names_the_file(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["format_version"] = 99
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"metadata\.json: bundle format version 99"):
        Tagger.load(copy)


def test_a_vocabulary_that_lists_a_character_twice_is_refused_naming_the_file(tiny_bundle, tmp_path):
    """Training added LAC's characters after the corpus's, repeats included: 5,173 characters
    had two rows, and which one a lookup returned (and training updated) was a sort's
    tie-breaking, which differs from CPU to CPU. Such a bundle is refused, not read one way here
    and another way there."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["vocab"]["chars"][-1] = metadata["vocab"]["chars"][5]
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"metadata\.json: corrupt \(vocab\.chars: .*1 items listed more than once"):
        Tagger.load(copy)


def test_a_vocabulary_keeps_each_item_once_where_it_first_comes():
    assert Vocab(["的", "a", "的", PAD, "b", "a"]).items == [PAD, UNK, BOS, "的", "a", "b"]


def test_every_character_gets_its_vocabulary_id(tiny_bundle, tagger):
    """The featuriser's table by code point agrees with the vocabulary for every character it
    knows, and gives <unk> (1) to the others."""
    chars = Vocab.from_json(read_metadata(tiny_bundle).vocab.chars)
    known = [item for item in chars.items[3:] if len(item) == 1]
    batch = tagger.featuriser.batch(known + ["\U0001F600\u9fff\uffff"])
    assert batch.chars[: len(known), 0].tolist() == [chars.id(item) for item in known]
    assert batch.chars[len(known), :3].tolist() == [chars.id(c) for c in "\U0001F600\u9fff\uffff"]


def test_int8_precision_loads_and_tags(tiny_bundle, tagger):
    quantised = Tagger.load(tiny_bundle, "cpu", precision="int8")
    assert quantised.precision == "int8"
    [result] = quantised.tag(["江泽民在北京大学发表讲话。"])
    assert_offsets(result)
    with pytest.raises(ValueError, match="precision"):
        Tagger.load(tiny_bundle, "cpu", precision="fp8")


def test_fp16_runs_the_encoder_in_half_precision_and_decodes_in_fp32(tiny_bundle, tagger):
    half = Tagger.load(tiny_bundle, "cpu", precision="fp16")
    assert half.precision == "fp16"
    dtypes = {name: tensor.dtype for name, tensor in half.network.state_dict().items()}
    assert dtypes["char_embedding.weight"] == dtypes["rnn.weight_hh_l0"] == torch.float16
    assert dtypes["ner_head.weight"] == dtypes["ner_crf.transitions"] == torch.float32
    texts = ["江泽民在北京大学发表讲话。", "", "iPhone 15 售价 5999 元！", "字" * 400]
    for result in half.tag(texts, batch_size=2):
        assert_offsets(result)


@pytest.fixture(scope="module")
def word_vector_bundle(tmp_path_factory):
    """The tiny recipe with SoftLexicon word vectors (network.word_dim), trained for real."""
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    config.network = dataclasses.replace(config.network, word_dim=8, unk_dropout=0.1)
    config.epochs = 1
    out = tmp_path_factory.mktemp("tiny-words") / "bundle"
    train(config, out, progress=False)
    return out


def test_a_bundle_with_word_vectors_tags_in_both_precisions(word_vector_bundle):
    metadata = json.loads((word_vector_bundle / "metadata.json").read_text(encoding="utf-8"))
    assert len(metadata["vocab"]["words"]) > 1000
    texts = ["中共中央总书记、国家主席江泽民发表1998年新年讲话。", "", "iPhone 15 售价 5999 元！", "字" * 400]
    results = {}
    for precision in ("fp32", "int8", "fp16"):
        tagger = Tagger.load(word_vector_bundle, "cpu", precision=precision)
        results[precision] = tagger.tag(texts, batch_size=2)
        for result in results[precision]:
            assert_offsets(result)
    # A word the vocabulary never saw, added at run time, is tagged too (its vector is <unk>'s).
    lexicon = Lexicon(jieba.posseg.POSTokenizer(jieba.Tokenizer()))
    lexicon.tokenizer.add_word("氪晶猫爪藤", 1000, "nt")
    tagger = Tagger.load(word_vector_bundle, "cpu", lexicon=lexicon)
    [result] = tagger.tag(["氪晶猫爪藤在北京"])
    assert_offsets(result)
