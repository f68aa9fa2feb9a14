"""Training options whose effect shows in the bundle."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from model.artifact import build_network, eager_copy, load_bundle
from model.features import Featuriser
from model.lexicon import Lexicon
from model.tagger import Tagger
from model.vocab import Vocab
from tests.conftest import ROOT, write_lac
from training.config import TrainConfig
from training.train import dev_figures, prune_teacher, start_from_teacher, train

WEIGHT = "rnn.weight_hh_l0"


def distance_from_initial(bundle: Path, seed: int) -> float:
    """Largest change of one RNN weight between the network as initialised and the bundle."""
    network, metadata = load_bundle(bundle)
    torch.manual_seed(seed)  # train() draws nothing from torch's generator before it builds the network
    initial = build_network(metadata)
    return float((network.state_dict()[WEIGHT] - initial.state_dict()[WEIGHT]).abs().max())


def test_ema_bundle_holds_the_averaged_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    """With a decay this close to 1 the average hardly leaves the weights after the first
    update, while the last weights of the same recipe without averaging (the session's tiny
    bundle) have moved on: the bundle must hold the average."""
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    assert not config.ema_decay
    train(config.model_copy(update={"ema_decay": 0.999999}), tmp_path / "averaged", progress=False)
    moved = distance_from_initial(tiny_bundle, config.seed)
    averaged = distance_from_initial(tmp_path / "averaged", config.seed)
    assert moved > 0.02
    assert averaged < 0.01


def test_multi_corpus_run_with_pretrained_characters(tmp_path: Path) -> None:
    """Two NER corpora into the one head and a LAC-format character table: the bundle loads
    and tags, its vocabulary has LAC's characters (traditional ones through q2b), and rows the
    training text never touched hold LAC's vectors, scaled."""
    write_lac(tmp_path / "LAC", dim=32)
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    config = config.model_copy(update={"ner_train": ["msra-train", "resume-train"], "ner_dev": ["msra-dev", "resume-dev"], "lac_source": str(tmp_path / "LAC"), "epochs": 1})
    report = train(config, tmp_path / "bundle", progress=False)
    assert set(report["dev"]["ner_by_corpus"]) == {"msra-dev", "resume-dev"}
    network, metadata = load_bundle(tmp_path / "bundle")
    chars = metadata.vocab.chars
    assert "國" in chars and "萬" in chars
    assert metadata.pretrained["chars"].rows >= 6
    assert metadata.corpus_sizes["resume-train"][0] == config.limit_train
    table = network.state_dict()["char_embedding.weight"]
    # 國 -> 国 (row 3 of the fake table, all 3.0), 萬 -> 万 (all 4.0); neither occurs in the training text
    assert torch.allclose(table[chars.index("萬")], table[chars.index("國")] * 4 / 3)
    [result] = Tagger.load(tmp_path / "bundle", "cpu").tag(["國務院在北京開會。"])
    assert "".join(t.text for t in result.tokens) == "國務院在北京開會。"


def test_a_corpus_on_its_own_head_leaves_the_bundle_with_the_served_head_alone(tmp_path: Path) -> None:
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    config = config.model_copy(update={"ner_train": ["msra-train", "resume-train"], "ner_dev": ["msra-dev"], "ner_head_of": {"resume-train": 1}, "epochs": 1})
    train(config, tmp_path / "bundle", progress=False)
    network, metadata = load_bundle(tmp_path / "bundle")
    assert not [name for name in network.state_dict() if name.startswith("aux_")]
    assert metadata.config["ner_head_of"] == {"resume-train": 1}
    build_network(metadata).load_state_dict(network.state_dict())  # the served shape, strictly
    [result] = Tagger.load(tmp_path / "bundle", "cpu").tag(["李明在北京大学工作。"])
    assert "".join(t.text for t in result.tokens) == "李明在北京大学工作。"


def test_fine_tuning_starts_from_the_bundle_and_keeps_it_unless_an_epoch_beats_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """init_from: the bundle's vocabularies, labels, network settings and weights; epoch 0 is the
    bundle as it came, scored on dev, and it stays the selection unless a fine-tuned epoch is better."""
    start, start_metadata = load_bundle(tiny_bundle)
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    config = config.model_copy(update={"init_from": str(tiny_bundle), "ner_train": ["msra-train", "resume-train"], "network": config.network.__class__(hidden_size=8)})
    # no epoch: the bundle comes back as it was, with its vocabularies and its network settings
    report = train(config.model_copy(update={"epochs": 0}), tmp_path / "as-it-was", progress=False)
    assert [entry["epoch"] for entry in report["history"]] == [0] and report["best_epoch"] == 0
    same, metadata = load_bundle(tmp_path / "as-it-was")
    assert metadata.vocab == start_metadata.vocab and metadata.labels == start_metadata.labels
    assert metadata.config["network"] == start_metadata.config["network"]  # not the config's hidden_size 8
    assert metadata.training.started_from == start_metadata.training
    assert all(torch.equal(same.state_dict()[name], weight) for name, weight in start.state_dict().items())
    # two epochs: the selection is the best of the bundle and the fine-tuned epochs
    report = train(config.model_copy(update={"epochs": 2}), tmp_path / "tuned", progress=False)
    figures = [entry["dev_mean_f1"] for entry in report["history"]]
    assert [entry["epoch"] for entry in report["history"]] == [0, 1, 2]
    assert report["training"]["epochs_run"] == 2
    assert report["best_epoch"] == figures.index(max(figures))
    assert figures[0] == pytest.approx(dev_figures(start_metadata.evaluation["dev"]))  # the bundle's own weights were scored
    [result] = Tagger.load(tmp_path / "tuned", "cpu").tag(["李明在北京大学工作。"])
    assert "".join(t.text for t in result.tokens) == "李明在北京大学工作。"


def test_fine_tuning_on_an_entity_type_the_bundle_lacks_is_an_error(tiny_bundle: Path, tmp_path: Path) -> None:
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    corpus = tmp_path / "products.char.bmes"
    corpus.write_text("小 B-PRODUCT\n米 E-PRODUCT\n好 O\n\n", encoding="utf-8")
    config = config.model_copy(update={"init_from": str(tiny_bundle), "ner_train": [str(corpus)], "ner_dev": ["msra-dev"]})
    with pytest.raises(ValueError, match="entity PRODUCT"):
        train(config, tmp_path / "tuned", progress=False)


def test_a_distilled_network_has_its_own_size_and_the_teachers_vocabularies_and_the_distillation_goes_on(tiny_bundle: Path, tmp_path: Path) -> None:
    """teacher: a smaller encoder trained towards the teacher's scores, with the teacher's
    vocabularies and labels (the scores are indexed by them). init_from and teacher together
    continue a distillation; a teacher whose vocabularies or labels differ from the starting
    bundle's is an error naming it (its scores would not line up)."""
    _, teacher_metadata = load_bundle(tiny_bundle)
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    config = config.model_copy(update={"teacher": str(tiny_bundle), "epochs": 1, "network": dataclasses.replace(config.network, hidden_size=12)})
    report = train(config, tmp_path / "student", progress=False)
    assert [entry["epoch"] for entry in report["history"]] == [1]
    network, metadata = load_bundle(tmp_path / "student")
    assert metadata.config["network"]["hidden_size"] == 12 and network.state_dict()["rnn.weight_hh_l0"].shape == (48, 12)
    assert metadata.vocab == teacher_metadata.vocab and metadata.labels == teacher_metadata.labels
    assert metadata.training.started_from == teacher_metadata.training
    [result] = Tagger.load(tmp_path / "student", "cpu").tag(["李明在北京大学工作。"])
    assert "".join(t.text for t in result.tokens) == "李明在北京大学工作。"

    pruned = train(config.model_copy(update={"prune_teacher": True, "epochs": 0}), tmp_path / "pruned", progress=False)
    assert [entry["epoch"] for entry in pruned["history"]] == [0]  # the teacher cut down, scored as it starts
    assert load_bundle(tmp_path / "pruned")[1].config["network"]["hidden_size"] == 12
    with pytest.raises(ValueError, match="prune_teacher starts a distillation: it needs teacher"):
        TrainConfig.model_validate({**config.model_dump(), "teacher": "", "prune_teacher": True})

    on = config.model_copy(update={"init_from": str(tmp_path / "student"), "epochs": 1})
    report = train(on, tmp_path / "on", progress=False)
    assert [entry["epoch"] for entry in report["history"]] == [0, 1]
    assert load_bundle(tmp_path / "on")[1].config["network"]["hidden_size"] == 12  # the student's size, not the teacher's

    other = tmp_path / "other"  # the teacher with two NER labels swapped: same sizes, other labels
    shutil.copytree(tiny_bundle, other)
    saved = json.loads((other / "metadata.json").read_text(encoding="utf-8"))
    saved["labels"]["ner"][1], saved["labels"]["ner"][2] = saved["labels"]["ner"][2], saved["labels"]["ner"][1]
    (other / "metadata.json").write_text(json.dumps(saved), encoding="utf-8")
    mismatched = on.model_copy(update={"teacher": str(other)})
    with pytest.raises(ValueError, match=r"other: the teacher's vocabularies or labels are not those of"):
        train(mismatched, tmp_path / "mismatched", progress=False)


def test_a_student_starts_from_the_teachers_tables_and_transitions(tiny_bundle: Path) -> None:
    network, metadata = load_bundle(tiny_bundle)
    teacher = eager_copy(network, metadata)
    student_metadata = metadata.model_copy(update={"config": {**metadata.config, "network": {**metadata.config["network"], "hidden_size": 12}}})
    student = build_network(student_metadata)
    start_from_teacher(student, teacher, "teacher")
    for name in ("char_embedding.weight", "bigram_embedding.weight", "lexicon_projection.weight", "seg_crf.transitions", "ner_crf.transitions"):
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name]), name
    narrower = metadata.model_copy(update={"config": {**metadata.config, "network": {**metadata.config["network"], "char_dim": 16}}})
    with pytest.raises(ValueError, match=r"teacher: the teacher's char_embedding.weight do not fit this network; give it the teacher's char_dim"):
        start_from_teacher(build_network(narrower), teacher, "teacher")


def test_a_pruned_student_is_the_teacher_without_the_units_the_heads_do_not_use(tiny_bundle: Path) -> None:
    """prune_teacher keeps the units the heads lean on and slices every gate's weights to them:
    with two units per direction made useless in the teacher (nothing reads their outputs, not
    the heads, not the recurrence), the student two units smaller gives the teacher's scores."""
    network, metadata = load_bundle(tiny_bundle)
    teacher = eager_copy(network, metadata)
    size = teacher.hidden_size
    useless = {"": [0, 5], "_reverse": [3, size - 1]}
    with torch.no_grad():
        for suffix, units in useless.items():
            getattr(teacher.rnn, f"weight_hh_l0{suffix}")[:, units] = 0.0
            columns = units if not suffix else [size + unit for unit in units]
            for head in (teacher.seg_head, teacher.pos_head, teacher.ner_head):
                head.weight[:, columns] = 0.0
    featuriser = Featuriser(Vocab.from_json(metadata.vocab.chars), Vocab.from_json(metadata.vocab.bigrams), Lexicon())
    batch = featuriser.batch(["李明在北京大学工作。", "今天天气很好", "新华社北京一月一日电"])
    inputs = (batch.chars, batch.bigrams, batch.lexicon, batch.lengths)
    smaller = metadata.model_copy(update={"config": {**metadata.config, "network": {**metadata.config["network"], "hidden_size": size - 2}}})
    student = build_network(smaller).eval()
    start_from_teacher(student, teacher, "teacher")
    share = prune_teacher(student, teacher, [batch])
    assert share == pytest.approx(1.0)
    for task, scores in teacher.head_scores(*inputs).items():
        torch.testing.assert_close(student.head_scores(*inputs)[task], scores, msg=task)
    same_size = build_network(metadata).eval()
    prune_teacher(same_size, teacher, [batch])
    assert all(torch.equal(weight, teacher.state_dict()[name]) for name, weight in same_size.state_dict().items() if name.startswith(("rnn.", "seg_head.", "pos_head.", "ner_head.")))
    larger = metadata.model_copy(update={"config": {**metadata.config, "network": {**metadata.config["network"], "hidden_size": size + 2}}})
    with pytest.raises(ValueError, match=r"at most the teacher's hidden size \(32\)"):
        prune_teacher(build_network(larger), teacher, [batch])


def test_the_distillation_loss_is_zero_towards_itself_and_positive_towards_another_network(tiny_bundle: Path) -> None:
    network, metadata = load_bundle(tiny_bundle)
    teacher = eager_copy(network, metadata)
    torch.manual_seed(0)
    stranger = build_network(metadata).eval()
    featuriser = Featuriser(Vocab.from_json(metadata.vocab.chars), Vocab.from_json(metadata.vocab.bigrams), Lexicon())
    batch = featuriser.batch(["李明在北京大学工作。", "今天天气很好"])
    inputs = (batch.chars, batch.bigrams, batch.lexicon, batch.lengths)
    scores = teacher.head_scores(*inputs)
    assert set(scores) == {"seg", "pos", "ner"} and scores["pos"].shape[0] == int(batch.lengths.sum())
    for temperature in (1.0, 2.0):
        towards_itself = teacher.loss(*inputs, None, None, None, teacher_scores=scores, temperature=temperature)["distil"]
        towards_another = stranger.loss(*inputs, None, None, None, teacher_scores=scores, temperature=temperature)["distil"]
        assert float(towards_itself.detach()) == pytest.approx(0.0, abs=1e-4)
        assert float(towards_another.detach()) > 1.0


def test_unknown_corpus_in_ner_head_of_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('ner_train = ["msra-train"]\nner_head_of = { "cluener-train" = 1 }\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"ner_head_of names \['cluener-train'\], which are not in ner_train"):
        TrainConfig.from_toml(config)


@pytest.mark.parametrize(
    "toml, named",
    [
        ("epochs = 3\nbalance_losses = true\n", "balance_losses"),  # an option since removed
        ('epochs = "ten"\n', "epochs"),
        ('[network]\ncell = "tcn"\n', "cell must be one of"),
        ("[network]\nhidden = 128\n", "network.hidden"),
    ],
)
def test_a_config_with_an_unknown_key_or_a_wrong_value_is_an_error_naming_it(tmp_path: Path, toml: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"(?s)bad\.toml: .*{re.escape(named)}"):
        TrainConfig.from_toml(config)


EDIT_DURING_TRAINING = """
import linecache, sys
from pathlib import Path
import model.crf
import training.train
from training.config import TrainConfig

step = training.train.Optimiser.step
source = model.crf.__file__

def step_after_an_edit(self, *args, **kwargs):
    # as if model/crf.py had been edited on disk once the run was under way (TorchScript
    # reads a function's source through linecache)
    if source not in linecache.cache or linecache.cache[source][1] is not None:
        lines = open(source, encoding="utf-8").read().splitlines(keepends=True)
        linecache.cache[source] = (None, None, ["# edited\\n"] * 3 + lines, source)
    return step(self, *args, **kwargs)

training.train.Optimiser.step = step_after_an_edit
training.train.train(TrainConfig.from_toml(sys.argv[1]), Path(sys.argv[2]), progress=False)
"""


def test_a_source_file_edited_during_training_does_not_break_the_export(tmp_path: Path) -> None:
    """Run M (2026-11-29) trained for 82 minutes, then failed to write its bundle: model/crf.py
    had been edited meanwhile and TorchScript compiled the network from the file as it was at
    the end. The network is scripted when training starts, so the bundle holds the code that
    trained. In a fresh interpreter: TorchScript caches what it compiled."""
    import subprocess
    import sys

    command = [sys.executable, "-c", EDIT_DURING_TRAINING, str(ROOT / "training" / "configs" / "tiny.toml"), str(tmp_path / "bundle")]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    [result] = Tagger.load(tmp_path / "bundle", "cpu").tag(["李明在北京大学工作。"])
    assert "".join(t.text for t in result.tokens) == "李明在北京大学工作。"


def test_the_bundle_names_the_commit_training_started_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit made while a run trains (they take hours) is not the code that trained."""
    import training.train

    checked_out = ["started-here"]
    step = training.train.Optimiser.step

    def step_after_a_commit(self, *args, **kwargs):
        checked_out[0] = "committed-during-the-run"
        return step(self, *args, **kwargs)

    monkeypatch.setattr(training.train, "git_commit", lambda: checked_out[0])
    monkeypatch.setattr(training.train.Optimiser, "step", step_after_a_commit)
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml").model_copy(update={"epochs": 1})
    train(config, tmp_path / "bundle", progress=False)
    assert load_bundle(tmp_path / "bundle")[1].training.git_commit == "started-here"
