"""The network: TorchScript export equals eager; the RNN cells match the gate equations."""


import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from model.artifact import build_network, eager_copy, load_bundle, save_bundle
from model.int8 import pinned_copy
from model.network import NetworkConfig, TaggerNetwork
from model.schemes import make_labels
from model.tagger import Tagger

SEG = make_labels(None, False)
POS = make_labels(["n", "v", "w", "nr"], False)
NER = make_labels(["PER", "LOC", "ORG"], True)


def small_network(**config) -> TaggerNetwork:
    torch.manual_seed(0)
    network = TaggerNetwork(NetworkConfig(hidden_size=8, char_dim=6, bigram_dim=4, lexicon_dim=3, **config), 50, 80, 25, SEG, POS, NER)
    return network.eval()


def random_batch(seed: int, batch: int = 5, steps: int = 9):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    chars = torch.randint(1, 50, (batch, steps), generator=generator)
    bigrams = torch.randint(1, 80, (batch, steps), generator=generator)
    lexicon = torch.rand(batch, steps, 25, generator=generator)
    return chars, bigrams, lexicon, lengths


@pytest.mark.parametrize("cell,merge,layers", [("lstm", "concat", 1), ("gru", "sum", 2), ("lstm", "mul", 1), ("gru", "ave", 1)])
def test_torchscript_equals_eager_on_random_inputs(cell, merge, layers):
    network = small_network(cell=cell, merge=merge, num_layers=layers)
    scripted = torch.jit.script(network)
    for seed in range(5):
        inputs = random_batch(seed)
        for eager, exported in zip(network(*inputs), scripted(*inputs)):
            assert torch.equal(eager, exported)


def test_torchscript_equals_eager_with_word_vectors():
    torch.manual_seed(0)
    network = TaggerNetwork(NetworkConfig(hidden_size=8, char_dim=6, bigram_dim=4, lexicon_dim=3, word_dim=5), 50, 80, 25, SEG, POS, NER, num_words=30).eval()
    scripted = torch.jit.script(network)
    for seed in range(5):
        inputs = random_batch(seed)
        generator = torch.Generator().manual_seed(seed)
        batch, steps = inputs[0].shape
        words = torch.randint(0, 30, (batch, steps, 4, 3), generator=generator)
        weights = torch.rand(batch, steps, 4, 3, generator=generator) * (words > 0)
        eager_out = network(*inputs, True, True, True, words, weights)
        for eager, exported in zip(eager_out, scripted(*inputs, True, True, True, words, weights)):
            assert torch.equal(eager, exported)
        # the word vectors are read: other words give other scores
        hidden = network.encode(*inputs, words, weights).data
        assert not torch.equal(hidden, network.encode(*inputs, (words + 1) % 30, weights).data)


def test_torchscript_equals_eager_on_real_sentences(tiny_bundle):
    scripted, metadata = load_bundle(tiny_bundle)
    tagger_scripted = Tagger(scripted, metadata)
    # The eager twin: same weights loaded into a fresh TaggerNetwork.
    eager = build_network(metadata)
    eager.load_state_dict(scripted.state_dict())
    tagger_eager = Tagger(eager.eval(), metadata)
    sentences = ["中共中央总书记、国家主席江泽民发表1998年新年讲话。", "张三在上海交通大学读书", "iPhone 15 售价 5999 元！"]
    assert [r.to_dict() for r in tagger_scripted.tag(sentences)] == [r.to_dict() for r in tagger_eager.tag(sentences)]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def lstm_reference(x, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's LSTM equations: gates i, f, g, o."""
    hidden = w_hh.shape[1]
    h, c = np.zeros(hidden), np.zeros(hidden)
    outputs = []
    for x_t in x:
        gates = w_ih @ x_t + b_ih + w_hh @ h + b_hh
        i, f, g, o = np.split(gates, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(h)
    return np.array(outputs)


def gru_reference(x, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's GRU equations: gates r, z, n."""
    hidden = w_hh.shape[1]
    h = np.zeros(hidden)
    outputs = []
    for x_t in x:
        gi = w_ih @ x_t + b_ih
        gh = w_hh @ h + b_hh
        r = sigmoid(gi[:hidden] + gh[:hidden])
        z = sigmoid(gi[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
        n = np.tanh(gi[2 * hidden :] + r * gh[2 * hidden :])
        h = (1 - z) * n + z * h
        outputs.append(h)
    return np.array(outputs)


@pytest.mark.parametrize("cell,reference", [("lstm", lstm_reference), ("gru", gru_reference)])
@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave"])
def test_rnn_matches_numpy_gate_equations(cell, reference, merge):
    network = small_network(cell=cell, merge=merge)
    # Fixed, hand-chosen weights: a smooth pattern, so nothing depends on the random init.
    with torch.no_grad():
        for name, parameter in network.rnn.named_parameters():
            values = torch.arange(parameter.numel(), dtype=torch.float32).reshape(parameter.shape)
            parameter.copy_(torch.sin(values * 0.37 + len(name)) * 0.5)
    weights = {name: p.detach().numpy().astype(np.float64) for name, p in network.rnn.named_parameters()}
    inputs = torch.sin(torch.arange(2 * 6 * network.rnn.input_size, dtype=torch.float32)).reshape(2, 6, -1)
    lengths = torch.tensor([6, 4])
    with torch.no_grad():
        packed = network.contextualise(pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False))
        hidden = network.unpack(packed.data, packed, inputs.shape[1]).numpy()
    for row, length in enumerate(lengths.tolist()):
        x = inputs[row, :length].numpy().astype(np.float64)
        forward = reference(x, weights["weight_ih_l0"], weights["weight_hh_l0"], weights["bias_ih_l0"], weights["bias_hh_l0"])
        backward = reference(x[::-1], weights["weight_ih_l0_reverse"], weights["weight_hh_l0_reverse"], weights["bias_ih_l0_reverse"], weights["bias_hh_l0_reverse"])[::-1]
        expected = {
            "concat": np.concatenate([forward, backward], axis=1),
            "sum": forward + backward,
            "mul": forward * backward,
            "ave": (forward + backward) / 2,
        }[merge]
        np.testing.assert_allclose(hidden[row, :length], expected, atol=1e-5)
        assert np.all(hidden[row, length:] == 0)


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("gru", 2)])
def test_a_sentence_is_tagged_the_same_alone_and_in_a_padded_batch(cell, layers):
    """The encoder runs on real positions only: a sentence's scores and tags must not depend
    on how much padding its batch companions add, nor on where in the batch it sits."""
    network = small_network(cell=cell, num_layers=layers)
    chars, bigrams, lexicon, lengths = random_batch(3, batch=6, steps=12)
    with torch.no_grad():
        batched = network(chars, bigrams, lexicon, lengths)
        hidden = network.encode(chars, bigrams, lexicon, lengths)
        scores = network.unpack(network.ner_head(hidden.data), hidden, chars.shape[1])
        for row, n in enumerate(lengths.tolist()):
            alone_inputs = (chars[row : row + 1, :n], bigrams[row : row + 1, :n], lexicon[row : row + 1, :n], lengths[row : row + 1])
            alone = network(*alone_inputs)
            for head_batched, head_alone in zip(batched, alone):
                assert torch.equal(head_batched[row, :n], head_alone[0])
            alone_hidden = network.encode(*alone_inputs)
            alone_scores = network.unpack(network.ner_head(alone_hidden.data), alone_hidden, n)
            torch.testing.assert_close(scores[row, :n], alone_scores[0], atol=1e-5, rtol=1e-5)
            assert torch.all(scores[row, n:] == 0)


def test_pos_tags_always_follow_the_segmentation():
    network = small_network()
    for seed in range(5):
        seg, pos, _ = network(*random_batch(seed))
        for seg_row, pos_row in zip(seg.tolist(), pos.tolist()):
            assert [SEG[s] for s in seg_row] == [POS[p].split("-")[0] for p in pos_row]


def test_unwanted_heads_are_skipped():
    network = small_network()
    seg, pos, ner = network(*random_batch(0), True, False, False)
    assert seg.numel() > 0 and pos.numel() == 0 and ner.numel() == 0


def test_tag_words_equals_constrained_viterbi():
    """Per-word POS decoding is the Viterbi path under BMES constraints and the seg boundaries."""
    from model.crf import CRF
    from model.schemes import split_label

    network = small_network()
    crf = CRF(POS)  # zero transition scores, constraints only
    generator = torch.Generator().manual_seed(3)
    for seed in range(10):
        seg, _, _ = network(*random_batch(seed))
        lengths = random_batch(seed)[3]
        scores = torch.log_softmax(torch.randn(seg.shape[0], seg.shape[1], len(POS), generator=generator), dim=-1)
        allowed = torch.tensor([[split_label(p)[0] == s for p in POS] for s in SEG])[seg]
        expected = crf.viterbi(scores.masked_fill(~allowed, -10000.0), lengths)
        assert torch.equal(network.tag_words(scores, seg, lengths), expected)


def test_unk_dropout_hides_a_share_of_ids_in_training_only():
    network = small_network(unk_dropout=0.25)
    torch.manual_seed(1)
    ids = torch.randint(2, 50, (64, 40))
    ids[:, 30:] = 0  # padding
    hidden = network.hide_ids(ids)
    changed = hidden != ids
    assert torch.all(hidden[changed] == 1)  # replaced by <unk>
    assert not changed[:, 30:].any()  # padding stays padding
    assert 0.2 < changed[:, :30].float().mean().item() < 0.3
    # Decoding (eval and the exported module) never hides anything: same input, same output.
    inputs = random_batch(3)
    assert all(torch.equal(a, b) for a, b in zip(network(*inputs), network(*inputs)))


def test_joint_decoding_equals_each_crf_alone():
    network = small_network()
    for seed in range(10):
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, 12, (6,), generator=generator)
        seg_scores = torch.randn(6, int(lengths.max()), len(SEG), generator=generator) * 5
        ner_scores = torch.randn(6, int(lengths.max()), len(NER), generator=generator) * 5
        seg, ner = network.decode_seg_and_ner(seg_scores, ner_scores, lengths)
        assert torch.equal(seg, network.seg_crf.viterbi(seg_scores, lengths))
        assert torch.equal(ner, network.ner_crf.viterbi(ner_scores, lengths))


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("gru", 1), ("lstm", 2), ("gru", 2)])
def test_the_int8_copy_gives_fp32_answers_and_none_that_depend_on_the_batch(tiny_bundle, tmp_path, cell: str, layers: int) -> None:
    """model/int8.py: the pinned network (before quantisation) is the same function as the
    original, and its int8 copy tags each sentence alike alone and batched, for every cell shape."""
    _, metadata = load_bundle(tiny_bundle)
    metadata = metadata.model_copy(deep=True)
    metadata.config["network"].update(cell=cell, num_layers=layers)
    torch.manual_seed(0)
    save_bundle(tmp_path, build_network(metadata).eval(), metadata)
    texts = ["江泽民在北京大学发表讲话。", "张三去了上海。", "我们的任务宏伟艰巨，面临的形势催人奋进。", "好"]
    tagger = Tagger.load(tmp_path, "cpu")
    expected = tagger.tag(texts)
    scripted, _ = load_bundle(tmp_path)
    tagger.network = torch.jit.script(pinned_copy(eager_copy(scripted, metadata), metadata))
    assert tagger.tag(texts) == expected
    int8 = Tagger.load(tmp_path, "cpu", precision="int8")
    assert [int8.tag([text])[0] for text in texts] == int8.tag(texts) == int8.tag(texts[::-1])[::-1]
