"""The evaluation protocol's metrics on hand-made cases."""

from model.tagger import Entity, TagResult, Token
from training.corpora import Example
from training.evaluate import score
from training.scoring import oov_recall, span_scores


def test_span_scores_and_per_type():
    gold = [{(0, 2, "PER"), (3, 5, "LOC")}]
    predicted = [{(0, 2, "PER"), (3, 5, "ORG"), (6, 7, "LOC")}]
    result = span_scores(gold, predicted, by_type=True)
    assert (result["correct"], result["predicted"], result["gold"]) == (1, 3, 2)
    assert abs(result["f1"] - 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)) < 1e-9
    assert result["by_type"]["PER"]["f1"] == 1.0 and result["by_type"]["ORG"]["precision"] == 0.0


def test_oov_recall_counts_only_unseen_words():
    texts = ["北京大学"]
    gold = [{(0, 2, None), (2, 4, None)}]
    assert oov_recall(texts, gold, [{(0, 2, None)}], vocabulary={"北京"}) == 0.0
    assert oov_recall(texts, gold, [{(2, 4, None)}], vocabulary={"北京"}) == 1.0


def test_score_skips_pos_for_a_segmenter_and_ignores_whitespace_tokens():
    example = Example("北京 大学", words=[(0, 2, "ns"), (3, 5, "n")])
    tokens = [Token("北京", 0, 2), Token(" ", 2, 3, "w"), Token("大学", 3, 5)]
    report = score([example], [TagResult(example.text, tokens)])
    assert report["seg"]["f1"] == 1.0
    assert "pos" not in report
    tagged = [Token("北京", 0, 2, "ns"), Token(" ", 2, 3, "w"), Token("大学", 3, 5, "v")]
    assert score([example], [TagResult(example.text, tagged)])["pos"]["f1"] == 0.5


def test_score_of_entities():
    example = Example("张三在北京", entities=[(0, 2, "PER"), (3, 5, "LOC")])
    result = TagResult(example.text, entities=[Entity("张三", "PER", 0, 2)])
    assert score([example], [result])["ner"]["recall"] == 0.5
