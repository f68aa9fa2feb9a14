"""Silver NER data (training.silver): an ensemble's majority vote written as a corpus that training reads."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from model.artifact import load_bundle
from model.tagger import Tagger
from training.config import TrainConfig
from training.corpora import load_corpus
from training.silver import SilverError, main, voted_entities
from training.train import train

ROOT = Path(__file__).resolve().parent.parent


def test_an_entity_needs_a_majority_of_teachers_with_the_same_span_and_type() -> None:
    first = [{(0, 3, "PER"), (5, 7, "LOC")}, set()]
    second = [{(0, 3, "PER"), (5, 7, "ORG")}, {(1, 2, "LOC")}]
    third = [{(0, 2, "PER"), (5, 7, "LOC")}, set()]
    assert voted_entities([first, second, third], 2) == [[(0, 3, "PER"), (5, 7, "LOC")], []]
    assert voted_entities([first, second, third], 3) == [[], []]


def test_a_vote_that_is_not_a_majority_is_refused() -> None:
    """With half the teachers or fewer, two kept spans could overlap."""
    with pytest.raises(SilverError, match="more than half"):
        voted_entities([[set()], [set()]], 1)


def test_silver_text_is_the_majority_of_teachers_and_a_training_corpus(shipped_bundle: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """Two of three teachers are the shipped model: the silver entities are exactly its own. Lines
    with whitespace are skipped and repeats kept once; a tiny training run reads the file."""
    lines = ["江泽民在北京会见了美国总统克林顿。", "马云在杭州创办了阿里巴巴。", "hello world", "马云在杭州创办了阿里巴巴。", "国务院总理李鹏今天会见了日本客人。"]
    (tmp_path / "data" / "text").mkdir(parents=True)
    with gzip.open(tmp_path / "data" / "text" / "posts.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    out = tmp_path / "silver.char.bmes"
    args = ["--teacher", str(shipped_bundle), "--teacher", str(tiny_bundle), "--teacher", str(shipped_bundle)]
    assert main([*args, "--unlabelled", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0

    silver = load_corpus(str(out))
    expected = sorted({line for line in lines if " " not in line})
    assert sorted(example.text for example in silver) == expected
    teacher = Tagger.load(shipped_bundle, "cpu")
    for example in silver:
        [result] = teacher.tag([example.text], tasks=["ner"])
        assert set(example.entities) == {(e.start, e.end, e.type) for e in result.entities}
    assert any(example.entities for example in silver)

    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    config = config.model_copy(update={"ner_train": ["msra-train", str(out)], "epochs": 1})
    train(config, tmp_path / "bundle", progress=False)
    _, metadata = load_bundle(tmp_path / "bundle")
    assert metadata.corpus_sizes[str(out)][0] == len(expected)
    source = metadata.corpora["ner"].source
    assert "Weibo" in source and "a vote of at least 2 of the bundles" in source
    [result] = Tagger.load(tmp_path / "bundle", "cpu").tag(["马云在杭州。"])
    assert "".join(t.text for t in result.tokens) == "马云在杭州。"


def test_teachers_are_scored_on_dev_and_the_vote_of_two_equal_teachers_is_theirs(shipped_bundle: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--teacher", str(shipped_bundle), "--teacher", str(tiny_bundle), "--teacher", str(shipped_bundle)]
    assert main([*args, "--score-on", "msra-dev", "--limit", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("msra-dev NER F1 ") for line in lines)
    shipped, vote = lines[0].split()[3], lines[3].split()[3]
    assert vote == shipped and float(vote) > 0.5 and lines[3].endswith("vote of at least 2")


def test_teachers_are_not_scored_on_a_test_split(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--teacher", str(tiny_bundle), "--score-on", "msra-test"]) == 2
    assert "dev split" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["msra-dev", "msra-test"])
def test_dev_and_test_splits_are_refused(tiny_bundle: Path, tmp_path: Path, split: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--teacher", str(tiny_bundle), "--corpus", split, "--out", str(tmp_path / "x")]) == 2
    assert "training split" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_missing_teacher_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--teacher", str(tmp_path / "nothing"), "--corpus", "msra-train", "--limit", "5", "--out", str(tmp_path / "x")]) == 2
    assert str(tmp_path / "nothing") in capsys.readouterr().err
