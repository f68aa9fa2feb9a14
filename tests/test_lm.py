"""Encoder pretraining (training/lm.py): what each language model may read, and a pretrained
encoder fine-tuned into a bundle that loads and tags."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import pytest
import torch

from model.artifact import load_bundle
from model.features import Featuriser
from model.lexicon import Lexicon
from model.network import TaggerNetwork
from model.schemes import make_labels
from model.tagger import Tagger
from model.vocab import Vocab, bigrams
from tests.conftest import ROOT
from training.config import TrainConfig
from training.corpora import load_corpus
from training.lm import CharLM, initialise_encoder, pretrain
from training.pretrained import PretrainedError
from training.train import train

TINY = ROOT / "training" / "configs" / "tiny.toml"


def test_each_direction_reads_nothing_of_the_characters_it_predicts() -> None:
    """The forward states up to a position do not change when the text after it does, and the
    backward states from a position on do not change when the text before it does: neither
    language model can read its targets (a bigram reaching across would)."""
    first, second = "我们在北京大学开会。", "我们在上海工厂开会。"  # the same length, different from position 3 to 6
    texts = [first, second]
    chars = Vocab(c for text in texts for c in text)
    bigram_vocab = Vocab(b for text in texts for b in bigrams(text))
    config = TrainConfig.from_toml(TINY).network
    torch.manual_seed(0)
    network = CharLM(config, len(chars), len(bigram_vocab), dropout=0.0).eval()
    batch = Featuriser(chars, bigram_vocab, Lexicon()).batch(texts)
    forward_states, backward_states, _ = network.states(batch.chars, batch.bigrams, batch.lengths)
    length = len(first)
    # forward: positions 0-2 read only the common prefix; position 3 already differs
    assert torch.equal(forward_states[0, :3], forward_states[1, :3])
    assert not torch.allclose(forward_states[0, 3], forward_states[1, 3])
    # backward (step t reads position length - 1 - t): positions 7-9 read only the common suffix
    suffix_steps = length - 7
    assert torch.equal(backward_states[0, :suffix_steps], backward_states[1, :suffix_steps])
    assert not torch.allclose(backward_states[0, suffix_steps], backward_states[1, suffix_steps])


def write_text(folder: Path, lines: list[str]) -> Path:
    (folder / "text").mkdir(parents=True)
    with gzip.open(folder / "text" / "lines.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return folder


def test_a_pretrained_encoder_starts_the_tagger_and_the_bundle_tags(tmp_path: Path) -> None:
    """Language models pretrained on a little text start a tiny training run: the tagger's
    forward direction holds the forward model's weights on the character and the bigram ending
    at it, the reverse direction the backward model's on the character and the bigram starting
    at it, every other input column zero, table rows by item; the run's bundle loads and tags."""
    lines = [example.text for example in load_corpus("msra-dev")[:300]]
    config = TrainConfig.from_toml(TINY).model_copy(update={"data_dir": str(write_text(tmp_path / "data", lines)), "epochs": 1})
    record = pretrain(config, tmp_path / "lm.pt", batch_size=32, progress=False)
    assert record["unlabelled_lines"] == 300
    assert record["held_out_bits_per_char"] < record["history"][0]["held_out_bits_per_char"]  # it learnt something

    saved = torch.load(tmp_path / "lm.pt", weights_only=True)
    state = saved["state"]
    net = config.network
    chars = Vocab(saved["chars"][3:][::-1])  # another order: rows must be found by item
    bigram_vocab = Vocab(saved["bigrams"][3:])
    network = TaggerNetwork(net, len(chars), len(bigram_vocab), Lexicon.size, make_labels(None, False), make_labels(["n", "v"], False), make_labels(["PER"], True))
    done = initialise_encoder(network, tmp_path / "lm.pt", chars, bigram_vocab)
    assert done["rows"] == len(chars)
    both = net.char_dim + net.bigram_dim
    forward, reverse = network.rnn.weight_ih_l0, network.rnn.weight_ih_l0_reverse
    assert torch.equal(forward[:, :both], state["forward_rnn.weight_ih_l0"])
    assert not forward[:, both:].any()
    assert torch.equal(reverse[:, : net.char_dim], state["backward_rnn.weight_ih_l0"][:, : net.char_dim])
    assert torch.equal(reverse[:, both : both + net.bigram_dim], state["backward_rnn.weight_ih_l0"][:, net.char_dim :])
    assert not reverse[:, net.char_dim : both].any() and not reverse[:, both + net.bigram_dim :].any()
    assert torch.equal(network.rnn.weight_hh_l0_reverse, state["backward_rnn.weight_hh_l0"])
    row = saved["chars"].index("京")
    assert torch.equal(network.char_embedding.weight[chars.id("京")], state["char_embedding.weight"][row])

    report = train(config.model_copy(update={"encoder_init": str(tmp_path / "lm.pt")}), tmp_path / "bundle", progress=False)
    assert report["best_epoch"] == 1
    _, metadata = load_bundle(tmp_path / "bundle")
    assert "encoder" in metadata.pretrained
    [result] = Tagger.load(tmp_path / "bundle", "cpu").tag(["李明在北京大学工作。"])
    assert "".join(t.text for t in result.tokens) == "李明在北京大学工作。"

    wider = dataclasses.replace(net, hidden_size=net.hidden_size + 8)
    other = TaggerNetwork(wider, len(chars), len(bigram_vocab), Lexicon.size, make_labels(None, False), make_labels(["n"], False), make_labels(["PER"], True))
    with pytest.raises(PretrainedError, match="lm.pt.*hidden_size"):
        initialise_encoder(other, tmp_path / "lm.pt", chars, bigram_vocab)


def test_a_missing_or_foreign_checkpoint_is_an_error_naming_it(tmp_path: Path) -> None:
    config = TrainConfig.from_toml(TINY).network
    chars, bigram_vocab = Vocab("北京"), Vocab(["北京"])
    network = TaggerNetwork(config, len(chars), len(bigram_vocab), Lexicon.size, make_labels(None, False), make_labels(["n"], False), make_labels(["PER"], True))
    with pytest.raises(PretrainedError, match="nothing.pt: not found; make it with `python -m training.lm"):
        initialise_encoder(network, tmp_path / "nothing.pt", chars, bigram_vocab)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(PretrainedError, match="other.pt: not a training.lm checkpoint"):
        initialise_encoder(network, tmp_path / "other.pt", chars, bigram_vocab)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="broken.pt: not readable"):
        initialise_encoder(network, tmp_path / "broken.pt", chars, bigram_vocab)
