"""The trainer's network and optimiser learn a toy sequence task.

Random numbers in [0, 1]; a step is labelled 1 once the running sum exceeds n/4
(n = sequence length). The forward direction sees the running sum, only the backward
one can know n: a bidirectional model is needed. The number enters through the
network's dense-feature input (the one dictionary features use).
"""

import time

import torch

from model.features import Batch
from model.network import NetworkConfig, TaggerNetwork
from model.schemes import encode, make_labels
from training.train import Optimiser

LABELS = make_labels(["X"], True)  # O, then a span B-X M-X ... E-X over the 1-steps


def toy_batch(generator: torch.Generator, size: int) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    lengths = torch.randint(8, 25, (size,), generator=generator)
    steps = int(lengths.max())
    values = torch.rand(size, steps, generator=generator)
    mask = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)
    values = values * mask
    ones = (values.cumsum(1) > lengths.unsqueeze(1) / 4) & mask
    tags = torch.zeros(size, steps, dtype=torch.long)
    for row in range(size):
        n = int(lengths[row])
        first = int(ones[row].float().argmax()) if ones[row].any() else n
        spans = [(first, n, "X")] if first < n else []
        tags[row, :n] = torch.tensor([LABELS.index(t) for t in encode(spans, n)])
    ids = mask.long()  # one "character" id everywhere; padding 0
    return Batch(ids, ids, values.unsqueeze(2), lengths), tags, ones


def test_bilstm_learns_running_sum_threshold():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    network = TaggerNetwork(NetworkConfig(hidden_size=24, char_dim=2, bigram_dim=2, lexicon_dim=8, dropout=0.0), 3, 3, 1, make_labels(None, False), make_labels(["n"], False), LABELS)
    optimiser = Optimiser(network, learning_rate=0.01, clip=5.0)
    test_batch, _, test_ones = toy_batch(torch.Generator().manual_seed(99), 500)
    started, accuracy = time.monotonic(), 0.0
    while time.monotonic() - started < 60 and accuracy < 0.97:
        for _ in range(50):
            batch, tags, _ = toy_batch(generator, 32)
            network.train()
            optimiser.step(batch, None, None, tags)
        network.eval()
        with torch.no_grad():
            _, _, ner = network(test_batch.chars, test_batch.bigrams, test_batch.lexicon, test_batch.lengths, False, False, True)
        mask = torch.arange(ner.shape[1]).unsqueeze(0) < test_batch.lengths.unsqueeze(1)
        predicted_ones = ner != LABELS.index("O")
        accuracy = float(((predicted_ones == test_ones) & mask).sum() / mask.sum())
    assert accuracy >= 0.95, f"step accuracy {accuracy:.3f} after {time.monotonic() - started:.0f} s"
