"""BMES encoding/decoding and the constrained CRF's decoding."""

import itertools

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from model.crf import CRF, scan_viterbi, sequential_viterbi
from model.schemes import SpanDecoder, decode, encode, is_valid, make_labels

TYPES = ["PER", "LOC", "ORG"]


@st.composite
def spans_and_length(draw, typed: bool = True):
    """Non-overlapping spans over a sequence, in order."""
    length = draw(st.integers(0, 30))
    cuts = sorted(draw(st.sets(st.integers(0, length), max_size=12)) | {0, length})
    spans = []
    for start, end in zip(cuts, cuts[1:]):
        if draw(st.booleans()):
            spans.append((start, end, draw(st.sampled_from(TYPES)) if typed else None))
    return spans, length


@given(spans_and_length())
def test_encode_decode_round_trip(case):
    spans, length = case
    tags = encode(spans, length)
    assert len(tags) == length
    assert decode(tags) == spans
    assert is_valid(tags)


@given(spans_and_length(typed=False))
def test_untyped_round_trip(case):
    spans, length = case
    assert decode(encode(spans, length)) == spans


@given(st.lists(st.sampled_from(make_labels(TYPES, True)), max_size=25))
def test_decode_of_any_sequence_gives_ordered_disjoint_spans(tags):
    spans = decode(tags)
    covered = set()
    for start, end, kind in spans:
        assert 0 <= start < end <= len(tags)
        assert kind in TYPES
        assert not covered & set(range(start, end))
        covered |= set(range(start, end))
    # every tagged position is in a span; no "O" position is
    assert covered == {i for i, t in enumerate(tags) if t != "O"}
    assert [s[0] for s in spans] == sorted(s[0] for s in spans)


LABEL_SETS = {"seg": make_labels(None, False), "pos": make_labels(["n", "v", "nr"], False), "ner": make_labels(TYPES, True)}


@st.composite
def label_batches(draw):
    """A head's labels and a padded batch of id rows, valid or not, with their lengths."""
    labels = LABEL_SETS[draw(st.sampled_from(sorted(LABEL_SETS)))]
    rows = draw(st.lists(st.lists(st.integers(0, len(labels) - 1), max_size=20), min_size=1, max_size=6))
    steps = max(len(row) for row in rows) + draw(st.integers(0, 3))
    padding = draw(st.integers(0, len(labels) - 1))  # whatever the padding holds is ignored
    ids = np.array([row + [padding] * (steps - len(row)) for row in rows], dtype=np.int64).reshape(len(rows), steps)
    return labels, ids, [len(row) for row in rows]


@settings(max_examples=500)
@given(label_batches())
def test_span_decoder_on_ids_gives_decodes_spans_for_every_row(case):
    labels, ids, lengths = case
    expected = [decode([labels[k] for k in row[:length]]) for row, length in zip(ids.tolist(), lengths)]
    assert SpanDecoder(labels).decode(ids, lengths) == expected


def brute_force(crf: CRF, emissions: torch.Tensor) -> list[int]:
    start, transitions, end = crf._scores()
    best, best_path = None, None
    for path in itertools.product(range(crf.num_labels), repeat=emissions.shape[0]):
        score = start[path[0]] + emissions[0, path[0]]
        for t in range(1, len(path)):
            score = score + transitions[path[t - 1], path[t]] + emissions[t, path[t]]
        score = score + end[path[-1]]
        if best is None or score > best:
            best, best_path = score, list(path)
    return best_path


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 10_000), st.booleans())
def test_viterbi_equals_brute_force(length, seed, typed):
    labels = make_labels(["PER", "LOC"], True) if typed else make_labels(None, False)
    generator = torch.Generator().manual_seed(seed)
    crf = CRF(labels)
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    if len(labels) ** length > 20_000:
        length = 3
    emissions = torch.randn(2, length + 1, len(labels), generator=generator)
    lengths = torch.tensor([length, length + 1])
    decoded = crf.viterbi(emissions, lengths)
    for row in range(2):
        n = int(lengths[row])
        expected = brute_force(crf, emissions[row, :n])
        assert decoded[row, :n].tolist() == expected
        assert is_valid([labels[k] for k in expected])
        assert decoded[row, n:].eq(0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(0, 10_000))
def test_viterbi_never_returns_an_invalid_sequence(length, seed):
    labels = make_labels(TYPES, True)
    generator = torch.Generator().manual_seed(seed)
    crf = CRF(labels)
    emissions = torch.randn(3, length, len(labels), generator=generator) * 10
    lengths = torch.tensor([length, max(1, length // 2), 1])
    decoded = crf.viterbi(emissions, lengths)
    for row in range(3):
        assert is_valid([labels[k] for k in decoded[row, : int(lengths[row])].tolist()])


def decoder_inputs(crf: CRF, emissions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    start, transitions, end = crf._scores()
    batch, _, n = emissions.shape
    return emissions, lengths, start.expand(batch, n), transitions.expand(batch, n, n), end.expand(batch, n)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 70), st.integers(0, 10_000), st.booleans())
def test_the_gpu_decoder_finds_the_same_paths_as_the_loop(batch, steps, seed, typed):
    """scan_viterbi (what a GPU runs) against the loop over time, with every length from 1 up,
    constraints and random scores, its products whole or in slices; TorchScript compiles it."""
    labels = make_labels(TYPES, True) if typed else make_labels(None, False)
    generator = torch.Generator().manual_seed(seed)
    crf = CRF(labels)
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    inputs = decoder_inputs(crf, torch.randn(batch, steps, len(labels), generator=generator) * 5, lengths)
    expected = sequential_viterbi(*inputs)
    assert torch.equal(scan_viterbi(*inputs), expected)
    assert torch.equal(scan_viterbi(*inputs, max_elements=1), expected)  # products one sequence at a time
    assert torch.equal(torch.jit.script(scan_viterbi)(*inputs), expected)


def test_the_gpu_decoders_operations_grow_with_log_t_not_t():
    """Each operation is a kernel launch on a GPU: the loop's number grows with the steps,
    the scan's with their logarithm."""
    crf = CRF(make_labels(TYPES, True))

    def operations(decoder, steps: int) -> int:
        inputs = decoder_inputs(crf, torch.randn(4, steps, crf.num_labels), torch.full((4,), steps))
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            decoder(*inputs)
        return sum(event.count for event in profiled.key_averages() if event.key.startswith("aten::"))

    loop = {steps: operations(sequential_viterbi, steps) for steps in (16, 128)}
    scan = {steps: operations(scan_viterbi, steps) for steps in (16, 128)}
    assert loop[128] - loop[16] > 100 * 10  # over ten per step
    assert scan[128] - scan[16] < 3 * 50  # three more doublings, under fifty each
    assert scan[128] < loop[128] / 5


def test_crf_likelihood_is_a_distribution():
    """exp(-NLL) summed over every label sequence is 1."""
    labels = make_labels(None, False)
    crf = CRF(labels)
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(4, 4))
    emissions = torch.randn(1, 3, 4)
    mask = torch.ones(1, 3, dtype=torch.bool)
    total = 0.0
    for path in itertools.product(range(4), repeat=3):
        nll = crf.neg_log_likelihood(emissions, torch.tensor([path]), mask)
        total += float(torch.exp(-nll.detach()))
    allowed = [p for p in itertools.product(range(4), repeat=3) if is_valid([labels[k] for k in p])]
    assert abs(total - 1.0) < 1e-3
    assert len(allowed) < 4**3  # the constraints removed some sequences
