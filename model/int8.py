"""int8 for the CPU: dynamic quantisation that gives a sentence the same tags in any batch.

Done at load time (`quantise`), so a bundle ships one set of fp32 weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence

from model.artifact import BundleMetadata, build_network, eager_copy
from model.network import TaggerNetwork, with_data
from model.scripting import owned_by_torchscript

# Dynamic int8 quantisation picks each activation's scale from the tensor's min and max, that is
# over the whole batch: a sentence's tags changed with the sentences batched beside it (35 of 500
# msra-test sentences under load). The int8 network therefore carries fixed "pins": two extra
# input columns at the lowest and highest value an input can take, and per direction two extra
# hidden units held at exactly -1 and +1 (their gates are constant: forget 1, input 0, output 1,
# or update 1 for a GRU) with zero weights to and from every other unit. Every row of every tensor
# the quantised layers see then spans the same range, so the scales no longer depend on the batch,
# and int8 products are exact integers: a sentence gets the same tags alone or in any batch.
PIN_GATE = 100.0  # sigmoid(100) is exactly 1.0 in float32; sigmoid(-100) is below every float32 that matters
PIN_CELL = 100.0  # tanh(100) is exactly 1.0


class PinnedTaggerNetwork(TaggerNetwork):
    """A TaggerNetwork whose RNN carries the pins described above (built by `pinned_copy`)."""

    __constants__ = ["has_words", "is_lstm"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.is_lstm = isinstance(self.rnn, torch.nn.LSTM)
        self.register_buffer("input_low", torch.zeros(()))
        self.register_buffer("input_high", torch.zeros(()))
        self.register_buffer("input_pins", torch.zeros(2))
        self.register_buffer("hidden_pins", torch.zeros(1))  # (H + 2,): 0 for the real units, -1 and +1
        self.register_buffer("cell_pins", torch.zeros(1))
        self.rnn_states = 2 * self.rnn.num_layers

    def contextualise(self, inputs: PackedSequence) -> PackedSequence:
        rows = inputs.data.shape[0]
        data = torch.cat([inputs.data.clamp(float(self.input_low), float(self.input_high)), self.input_pins.expand(rows, 2)], dim=1)
        states = self.rnn_states
        batch = int(inputs.batch_sizes[0])
        hidden0 = self.hidden_pins.expand(states, batch, self.hidden_pins.shape[0]).contiguous()
        if self.is_lstm:
            cell0 = self.cell_pins.expand(states, batch, self.cell_pins.shape[0]).contiguous()
            output, _ = self.rnn(with_data(inputs, data), (hidden0, cell0))
        else:
            output, _ = self.rnn(with_data(inputs, data), hidden0)
        return output  # (N, 2 (H + 2)); the heads have zero weights on the pin units


def pinned_copy(eager: TaggerNetwork, metadata: BundleMetadata) -> PinnedTaggerNetwork:
    """The weights of `eager` (eval mode) in a PinnedTaggerNetwork: same outputs in fp32, plus
    the pins that make the int8 copy batch-invariant."""
    if eager.merge != "concat":
        raise ValueError(f"int8 needs network.merge = 'concat' (this bundle has {eager.merge!r}); use precision fp32")
    pinned = build_network(metadata, PinnedTaggerNetwork)
    state = {k: v for k, v in eager.state_dict().items() if not k.startswith("rnn.") and not k.startswith(("seg_head", "pos_head", "ner_head"))}
    pinned.load_state_dict(state, strict=False)
    hidden = eager.hidden_size
    old_rnn = eager.rnn
    gates = 4 if pinned.is_lstm else 3
    layers = old_rnn.num_layers
    # the RNN, two units larger per direction
    rnn_class = torch.nn.LSTM if pinned.is_lstm else torch.nn.GRU
    new_rnn = rnn_class(old_rnn.input_size + 2, hidden + 2, num_layers=layers, bidirectional=True, batch_first=True)
    # Where each old unit goes: unit j of a gate block of H moves to j of a block of H + 2.
    unit_rows = torch.cat([torch.arange(hidden) + g * (hidden + 2) for g in range(gates)])
    # Layer > 0 reads [forward H | backward H], now [forward H + 2 | backward H + 2].
    upper_columns = torch.cat([torch.arange(hidden), torch.arange(hidden) + hidden + 2])
    pin_bias = torch.zeros(gates, hidden + 2)
    if pinned.is_lstm:  # gates i, f, g, o: input 0, forget 1, output 1; the cell keeps +-PIN_CELL
        pin_bias[0, hidden:], pin_bias[1, hidden:], pin_bias[3, hidden:] = -PIN_GATE, PIN_GATE, PIN_GATE
    else:  # gates r, z, n: update 1 keeps the initial state
        pin_bias[1, hidden:] = PIN_GATE
    with torch.no_grad():
        for name, new in new_rnn.named_parameters():
            old = getattr(old_rnn, name)
            new.zero_()
            if name.startswith("weight_ih"):
                columns = torch.arange(old.shape[1]) if name.startswith("weight_ih_l0") else upper_columns
                new[unit_rows.unsqueeze(1), columns.unsqueeze(0)] = old
            elif name.startswith("weight_hh"):
                new[unit_rows.unsqueeze(1), torch.arange(hidden).unsqueeze(0)] = old
            elif name.startswith("bias_ih"):
                new[unit_rows] = old
                new += pin_bias.flatten()
            else:  # bias_hh
                new[unit_rows] = old
    pinned.rnn = new_rnn
    # heads: zero weights on the four pin units
    head_columns = upper_columns
    for head in ("seg_head", "pos_head", "ner_head"):
        old_head = getattr(eager, head)
        new_head = torch.nn.Linear(2 * (hidden + 2), old_head.out_features)
        with torch.no_grad():
            new_head.weight.zero_()
            new_head.weight[:, head_columns] = old_head.weight
            new_head.bias.copy_(old_head.bias)
        setattr(pinned, head, new_head)
    # The input range: the tables' values and the dictionary projection's largest possible
    # output (its features lie in [0, 1], then a ReLU), so that clamping changes nothing.
    tables = [eager.char_embedding.weight.detach(), eager.bigram_embedding.weight.detach()]
    low = min(float(table.min()) for table in tables)
    high = max(float(table.max()) for table in tables)
    projection = eager.lexicon_projection
    projection_high = float((projection.bias + projection.weight.clamp(min=0).sum(dim=1)).max().detach())
    if projection_high > high:
        # That bound (9.6 in the shipped model, 3.0 the largest seen on 6,000 PD98 sentences)
        # would coarsen every input's steps; shrink the projection into the tables' range and
        # grow the RNN's weights on its columns by as much: the same function, tight pins.
        shrink = high / projection_high
        first = eager.char_embedding.embedding_dim + 2 * eager.bigram_embedding.embedding_dim
        columns = slice(first, first + projection.out_features)
        with torch.no_grad():
            pinned.lexicon_projection.weight.mul_(shrink)
            pinned.lexicon_projection.bias.mul_(shrink)
            for direction in ("", "_reverse"):
                getattr(new_rnn, f"weight_ih_l0{direction}")[:, columns] /= shrink
    if eager.has_words:  # pooled word vectors have no tight bound: clamped beyond 4 rows' worth
        largest = 4 * float(eager.word_embedding.weight.detach().abs().max())
        low, high = min(low, -largest), max(high, largest)
    low, high = min(low, 0.0), max(high, 0.0)
    pinned.input_low.fill_(low)
    pinned.input_high.fill_(high)
    pinned.input_pins.copy_(torch.tensor([low, high]))
    pinned.hidden_pins = torch.cat([torch.zeros(hidden), torch.tensor([-1.0, 1.0])])
    pinned.cell_pins = torch.cat([torch.zeros(hidden), torch.tensor([-PIN_CELL, PIN_CELL])])
    return pinned.eval()


def quantise(network: torch.jit.ScriptModule, metadata: BundleMetadata) -> torch.jit.ScriptModule:
    """An int8 copy for the CPU: the RNN and the heads with int8 weights and activations
    quantised on the fly against the pins (the dictionary projection, 25 inputs, stays fp32:
    its inputs carry no pins), scripted again."""
    pinned = pinned_copy(eager_copy(network, metadata), metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice for eager-mode quantisation
        quantised = torch.ao.quantization.quantize_dynamic(pinned, {"rnn", "seg_head", "pos_head", "ner_head"}, dtype=torch.qint8)
        scripted = torch.jit.script(quantised)
    return owned_by_torchscript(scripted.eval())
