"""Where the BiLSTM's time goes on a CPU, and what folding the character table into the input
projection (issue "Speed", item 5) would buy, at the shipped network's shapes.

    python -m bench.rnn_variants [--model model/artifacts/default] [--rounds 3] [--out bench/results/rnn_variants.json]

msra-test's sentence lengths in length-sorted batches of 128, as `Tagger.tag` forms them;
random weights and inputs of the bundle's sizes (the arithmetic does not depend on the values),
one torch thread. Variants: torch's LSTM on packed input in fp32 and dynamic int8 (what the
service runs); a TorchScript loop over time that takes precomputed gate inputs, fed by the
whole input projection as one matrix product or by a lookup of the character table already
multiplied into it (the fold) plus the product of the other inputs; and the loop's parts alone.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from bench.throughput import cpu_name
from model.artifact import read_metadata
from training.corpora import load_corpus

DEFAULT_OUT = Path("bench/results/rnn_variants.json")
BATCH = 128


@torch.jit.script
def recurrence(gate_inputs: Tensor, batch_sizes: list[int], weight_hh: Tensor, hidden: int, gates: bool) -> Tensor:
    """Both directions of an LSTM over packed (N, 2, 4H) gate inputs, the backward direction's
    already in reverse order within each sequence; gate order i, f, o, g. Without `gates`,
    only the recurrent matrix products run."""
    state = torch.zeros(2, batch_sizes[0], hidden)
    cell = torch.zeros(2, batch_sizes[0], hidden)
    out = torch.empty(gate_inputs.shape[0], 2, hidden)
    offset = 0
    for size in batch_sizes:
        state, cell = state[:, :size], cell[:, :size]
        products = torch.baddbmm(gate_inputs[offset : offset + size].transpose(0, 1), state, weight_hh)
        if gates:
            sigmoids = products[:, :, : 3 * hidden].sigmoid()
            cell = sigmoids[:, :, hidden : 2 * hidden] * cell + sigmoids[:, :, :hidden] * products[:, :, 3 * hidden :].tanh()
            state = sigmoids[:, :, 2 * hidden :] * cell.tanh()
        else:
            state = products[:, :, :hidden]
        out[offset : offset + size] = state.transpose(0, 1)
        offset += size
    return out


def reversed_within(packed: PackedSequence) -> Tensor:
    """For each packed position (row r, step t), the packed index of (r, length_r - 1 - t)."""
    sizes = packed.batch_sizes
    offsets = torch.cumsum(sizes, 0) - sizes
    lengths = (sizes.unsqueeze(0) > torch.arange(int(sizes[0])).unsqueeze(1)).sum(1)
    index = torch.empty(int(sizes.sum()), dtype=torch.long)
    for step, size in enumerate(sizes.tolist()):
        rows = torch.arange(size)
        index[offsets[step] + rows] = offsets[lengths[rows] - 1 - step] + rows
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    metadata = read_metadata(args.model)
    network = metadata.config["network"]
    hidden, char_dim = network["hidden_size"], network["char_dim"]
    input_dim = char_dim + 2 * network["bigram_dim"] + network["lexicon_dim"]
    chars = len(metadata.vocab.chars)
    lengths = sorted(min(len(example.text), metadata.config["max_len"]) for example in load_corpus("msra-test"))
    packs = [pack_padded_sequence(torch.randn(len(group), group[-1], input_dim), torch.tensor(group), batch_first=True, enforce_sorted=False) for group in (lengths[i : i + BATCH] for i in range(0, len(lengths), BATCH))]
    char_ids = [torch.randint(0, chars, (pack.data.shape[0],)) for pack in packs]
    reverse = [reversed_within(pack) for pack in packs]
    sizes = [pack.batch_sizes.tolist() for pack in packs]

    lstm = nn.LSTM(input_dim, hidden, bidirectional=True, batch_first=True).eval()
    int8 = torch.ao.quantization.quantize_dynamic(lstm, {nn.LSTM}, dtype=torch.qint8)
    weight_ih = torch.randn(8 * hidden, input_dim) * 0.1
    bias = torch.randn(8 * hidden) * 0.1
    weight_hh = torch.randn(2, hidden, 4 * hidden) * 0.1
    folded_chars = torch.randn(chars, char_dim) @ weight_ih[:, :char_dim].t()  # (chars, 8H): the fold, made once
    weight_rest = weight_ih[:, char_dim:].t().contiguous()

    def both_directions(projected: Tensor, i: int) -> Tensor:
        projected = projected.view(-1, 2, 4 * hidden)
        return torch.stack([projected[:, 0], projected[reverse[i], 1]], 1)

    variants: dict[str, Callable[[int], object]] = {
        "torch LSTM, fp32, packed": lambda i: lstm(packs[i]),
        "torch LSTM, dynamic int8, packed": lambda i: int8(packs[i]),
        "loop, input projection as one product": lambda i: recurrence(both_directions(torch.addmm(bias, packs[i].data, weight_ih.t()), i), sizes[i], weight_hh, hidden, True),
        "loop, character table folded in": lambda i: recurrence(both_directions(torch.addmm(bias, packs[i].data[:, char_dim:], weight_rest).add_(folded_chars[char_ids[i]]), i), sizes[i], weight_hh, hidden, True),
        "  its recurrence alone (products and gates)": lambda i: recurrence(torch.zeros(packs[i].data.shape[0], 2, 4 * hidden), sizes[i], weight_hh, hidden, True),
        "  its recurrent products alone": lambda i: recurrence(torch.zeros(packs[i].data.shape[0], 2, 4 * hidden), sizes[i], weight_hh, hidden, False),
        "  the whole input projection alone": lambda i: torch.addmm(bias, packs[i].data, weight_ih.t()),
        "  the folded input projection alone": lambda i: torch.addmm(bias, packs[i].data[:, char_dim:], weight_rest).add_(folded_chars[char_ids[i]]),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(args.rounds):  # interleaved: the VM's speed drifts
            for name, run in variants.items():
                started = time.perf_counter()
                for i in range(len(packs)):
                    run(i)
                seconds[name].append(time.perf_counter() - started)
    characters = sum(lengths)
    print(f"{characters:,} characters (msra-test), batches of {BATCH}, input {input_dim}, hidden {hidden} per direction, one thread, {cpu_name()}")
    print("| variant | best s | chars/s |\n| --- | --- | --- |")
    for name, rounds in seconds.items():
        print(f"| {name} | {min(rounds):.2f} | {characters / min(rounds):,.0f} |")
    result = {"cpu": cpu_name(), "characters": characters, "input_dim": input_dim, "hidden": hidden, "batch": BATCH, "seconds": seconds, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
