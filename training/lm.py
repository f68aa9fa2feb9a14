"""Encoder pretraining: the tagger's character and bigram tables and its BiLSTM trained as a
forward and a backward character language model on the unlabelled text of ../shared/data/text
and the training splits (the ELMo/Flair recipe in the tagger's own shape), then fine-tuned by
`training.train` (the config's `encoder_init`). Training only: a bundle carries the fine-tuned
weights.

    python -m training.lm --config training/configs/default.toml --out runs/pretrained/lm.pt [--minutes 40]

Each direction reads only inputs that cannot give its target away. The forward LSTM, which
predicts the next character, reads each character and the bigram that ends at it; the backward
LSTM, which predicts the previous character, reads each character and the bigram that starts at
it. Neither reads the dictionary features (a word's roles tell its other characters); in the
tagger those input columns start at zero and learn in fine-tuning. The vocabularies are built
from the same training text as `training.train` builds them, so every row has a pretrained value.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm import tqdm

from model.features import Featuriser
from model.lexicon import Lexicon
from model.network import NetworkConfig, TaggerNetwork, init_table
from model.text import atomise, chunk_ranges
from model.vocab import Vocab
from training.config import TrainConfig
from training.corpora import data_dir
from training.data import Sequence_, load_training, make_batches, vocabularies
from training.pretrained import PretrainedError, initialise_tables, set_rows, unlabelled_lines

KIND = "zh-tagger character language models 1"
BOS_BIGRAM = 2  # Vocab's <bos> id, as TaggerNetwork reads it before the first character
HELD_OUT_EVERY = 100  # every 100th chunk of the unlabelled text is held out (at most MAX_HELD_OUT)
MAX_HELD_OUT = 2000


def reversed_positions(lengths: Tensor, steps: int) -> Tensor:
    """(B, steps) indices that read each row's first `lengths[b]` positions backwards (padding stays put)."""
    step = torch.arange(steps).unsqueeze(0)
    length = lengths.unsqueeze(1)
    return torch.where(step < length, length - 1 - step, step)


class CharLM(nn.Module):
    """A forward and a backward character LSTM over the tagger's character and bigram tables,
    each predicting the next character in its own reading order (adaptive softmax)."""

    def __init__(self, config: NetworkConfig, num_chars: int, num_bigrams: int, dropout: float):
        super().__init__()
        if config.cell != "lstm" or config.num_layers != 1:
            raise ValueError("encoder pretraining is written for one LSTM layer (network.cell = 'lstm', num_layers = 1)")
        self.char_embedding = nn.Embedding(num_chars, config.char_dim, padding_idx=0, sparse=True)
        self.bigram_embedding = nn.Embedding(num_bigrams, config.bigram_dim, padding_idx=0, sparse=True)
        for table in (self.char_embedding, self.bigram_embedding):
            init_table(table, config.embedding_init_std)
        inputs = config.char_dim + config.bigram_dim
        self.forward_rnn = nn.LSTM(inputs, config.hidden_size, batch_first=True)
        self.backward_rnn = nn.LSTM(inputs, config.hidden_size, batch_first=True)
        # Characters are ranked by frequency in the vocabulary, as the adaptive softmax wants.
        cutoffs = [c for c in (2000, 6000) if c < num_chars - 1] or [num_chars // 2]
        self.forward_output = nn.AdaptiveLogSoftmaxWithLoss(config.hidden_size, num_chars, cutoffs, div_value=4.0)
        self.backward_output = nn.AdaptiveLogSoftmaxWithLoss(config.hidden_size, num_chars, cutoffs, div_value=4.0)
        self.dropout = nn.Dropout(dropout)
        self.unk_dropout = config.unk_dropout

    def hide(self, ids: Tensor) -> Tensor:
        """As TaggerNetwork.hide_ids: a random `unk_dropout` share of the ids set to <unk> in training."""
        if not self.training or self.unk_dropout == 0:
            return ids
        return ids.masked_fill((torch.rand(ids.shape) < self.unk_dropout) & (ids != 0), 1)

    def states(self, chars: Tensor, bigrams: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The forward LSTM's (B, T, H) states over the characters in order, the backward LSTM's
        over them in reverse (its step t reads position lengths[b] - 1 - t), and the character
        ids in the backward reading order."""
        steps = chars.shape[1]
        left_bigrams = torch.cat([torch.full_like(bigrams[:, :1], BOS_BIGRAM), bigrams[:, :-1]], dim=1)
        reverse = reversed_positions(lengths, steps)
        backward_chars, right_bigrams = chars.gather(1, reverse), bigrams.gather(1, reverse)
        forward_inputs = torch.cat([self.char_embedding(self.hide(chars)), self.bigram_embedding(self.hide(left_bigrams))], dim=2)
        backward_inputs = torch.cat([self.char_embedding(self.hide(backward_chars)), self.bigram_embedding(self.hide(right_bigrams))], dim=2)
        return self._run(self.forward_rnn, forward_inputs, lengths, steps), self._run(self.backward_rnn, backward_inputs, lengths, steps), backward_chars

    def _run(self, rnn: nn.LSTM, inputs: Tensor, lengths: Tensor, steps: int) -> Tensor:
        packed = pack_padded_sequence(self.dropout(inputs), lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=steps)[0]

    def loss(self, chars: Tensor, bigrams: Tensor, lengths: Tensor) -> tuple[Tensor, int]:
        """Summed negative log-likelihood (nats) of every next character in both directions, and
        how many were predicted. Rows need at least two characters."""
        forward_states, backward_states, backward_chars = self.states(chars, bigrams, lengths)
        steps = chars.shape[1]
        has_next = torch.arange(steps - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)  # (B, T - 1)
        total = torch.zeros(())
        for states, order, output in ((forward_states, chars, self.forward_output), (backward_states, backward_chars, self.backward_output)):
            targets = order[:, 1:][has_next]
            total = total + output(self.dropout(states[:, :-1][has_next]), targets).loss * targets.numel()
        return total, 2 * int(has_next.sum())


def initialise_encoder(network: TaggerNetwork, path: str | Path, chars: Vocab, bigram_vocab: Vocab) -> dict:
    """The tagger's tables and BiLSTM from the language models saved at `path`: table rows by
    item, the forward LSTM into the forward direction (its inputs: the character and the bigram
    ending at it), the backward LSTM into the reverse direction (the character and the bigram
    starting at it); every other input column (dictionary features, the other bigram) zero, so
    that fine-tuning starts from the language models' function. What was done, for the metadata."""
    path = Path(path)
    remedy = f"make it with `python -m training.lm --config CONFIG --out {path}`"
    if not path.is_file():
        raise PretrainedError(f"{path}: not found; {remedy}")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises several kinds for a damaged or foreign file
        raise PretrainedError(f"{path}: not readable as a training.lm checkpoint ({error}); {remedy}") from error
    if not isinstance(saved, dict) or saved.get("kind") != KIND:
        raise PretrainedError(f"{path}: not a training.lm checkpoint; {remedy}")
    char_dim, bigram_dim = network.char_embedding.embedding_dim, network.bigram_embedding.embedding_dim
    ours = {"char_dim": char_dim, "bigram_dim": bigram_dim, "hidden_size": network.hidden_size}
    if saved["network"] != ours or not isinstance(network.rnn, nn.LSTM) or network.rnn.num_layers != 1:
        raise PretrainedError(f"{path}: language models with {saved['network']}, the network has {ours} ({type(network.rnn).__name__}, {network.rnn.num_layers} layer(s)); pretrain with the same network settings")
    state = saved["state"]
    rows = set_rows(network.char_embedding, *_rows_by_item(state["char_embedding.weight"], saved["chars"], chars.items), None)
    set_rows(network.bigram_embedding, *_rows_by_item(state["bigram_embedding.weight"], saved["bigrams"], bigram_vocab.items), None)
    both = char_dim + bigram_dim
    with torch.no_grad():
        for direction, prefix in (("", "forward_rnn"), ("_reverse", "backward_rnn")):
            weight_ih = getattr(network.rnn, f"weight_ih_l0{direction}")
            weight_ih.zero_()
            pretrained = state[f"{prefix}.weight_ih_l0"]
            if direction:  # the character, then the bigram starting at it (the tagger's third input)
                weight_ih[:, :char_dim] = pretrained[:, :char_dim]
                weight_ih[:, both : both + bigram_dim] = pretrained[:, char_dim:]
            else:  # the character, then the bigram ending at it (the tagger's second input)
                weight_ih[:, :both] = pretrained
            for name in ("weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(network.rnn, f"{name}{direction}").copy_(state[f"{prefix}.{name}"])
    record = saved["record"]
    print(f"pretrained encoder: {path} ({record['characters_seen']} characters seen, held-out {record['held_out_bits_per_char']:.3f} bits per character)", file=sys.stderr)
    return {"source": f"forward and backward character LSTMs pretrained on the unlabelled text and training splits ({path.name}, {record['characters_seen']} characters seen)", "rows": rows, "of": len(chars), "licence": "derived from the corpora above"}


def _rows_by_item(pretrained: Tensor, pretrained_items: list[str], items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """For each of `items`, its row of `pretrained` (vocabulary `pretrained_items`) and whether it has one: `set_rows`' inputs."""
    index = {item: row for row, item in enumerate(pretrained_items)}
    found = np.array([item in index for item in items], dtype=bool)
    vectors = np.zeros((len(items), pretrained.shape[1]), dtype=np.float32)
    vectors[found] = pretrained[[index[item] for item in items if item in index]].numpy()
    return vectors, found


def chunk_texts(texts: list[str], max_len: int) -> list[str]:
    """The model strings of the texts' chunks as the tagger cuts them; chunks of one atom predict nothing and are left out."""
    chunks = []
    for text in texts:
        atoms = atomise(text)
        chunks += [atoms.model_text[start:end] for start, end in chunk_ranges(atoms, max_len) if end - start > 1]
    return chunks


@torch.no_grad()
def bits_per_char(network: CharLM, featuriser: Featuriser, chunks: list[str], batch_size: int) -> float:
    network.eval()
    total, count = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = featuriser.batch(chunks[start : start + batch_size])
        loss, predicted = network.loss(batch.chars, batch.bigrams, batch.lengths)
        total, count = total + float(loss), count + predicted
    network.train()
    return total / max(count, 1) / math.log(2)


def pretrain(config: TrainConfig, out: Path, minutes: float = 0.0, epochs: int = 1, dropout: float = 0.2, batch_size: int = 64, limit_lines: int = 0, progress: bool = True) -> dict:
    """Train the language models on the unlabelled text (the first `limit_lines` lines; 0 = all)
    and the config's training splits, for `epochs` passes or `minutes`, whichever ends first;
    save the checkpoint `initialise_encoder` reads to `out`. Returns its record."""
    started = time.time()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    pd98_train, ner_train_by_corpus = load_training(config)
    labelled = [e.text for e in pd98_train] + [e.text for examples in ner_train_by_corpus for e in examples]
    char_vocab, bigram_vocab = vocabularies(config, [atomise(text).model_text for text in labelled])
    lines = []
    for line in unlabelled_lines(data_dir(config.data_dir or None) / "text"):
        if limit_lines and len(lines) >= limit_lines:
            break
        lines.append(line)
    unlabelled = chunk_texts(lines, config.max_len)
    held_out = unlabelled[::HELD_OUT_EVERY][:MAX_HELD_OUT]
    kept = set(range(0, len(unlabelled), HELD_OUT_EVERY)[:MAX_HELD_OUT])
    train_chunks = [chunk for k, chunk in enumerate(unlabelled) if k not in kept] + chunk_texts(labelled, config.max_len)
    print(f"chars {len(char_vocab)}, bigrams {len(bigram_vocab)}; {len(train_chunks)} training chunks ({sum(map(len, train_chunks))} atoms), {len(held_out)} held out", file=sys.stderr)

    network = CharLM(config.network, len(char_vocab), len(bigram_vocab), dropout)
    initialise_tables(network, config, char_vocab, bigram_vocab)
    featuriser = Featuriser(char_vocab, bigram_vocab, Lexicon())
    sparse = [p for n, p in network.named_parameters() if "embedding" in n]
    dense = [p for n, p in network.named_parameters() if "embedding" not in n]
    optimisers = [torch.optim.Adam(dense, lr=config.learning_rate), torch.optim.SparseAdam(sparse, lr=config.embedding_learning_rate or config.learning_rate)]
    rng = random.Random(config.seed)
    budget = minutes * 60 if minutes else math.inf
    history = [{"minutes": 0.0, "characters_seen": 0, "held_out_bits_per_char": bits_per_char(network, featuriser, held_out, batch_size)}]
    print(history[-1], file=sys.stderr, flush=True)
    seen, last_report = 0, time.time()
    for epoch in range(1, epochs + 1):
        batches = make_batches([Sequence_(chunk, None, None, None) for chunk in train_chunks], batch_size, rng)
        for batch in tqdm(batches, desc=f"epoch {epoch}", disable=not progress, mininterval=5):
            inputs = featuriser.batch([s.text for s in batch])
            loss, predicted = network.loss(inputs.chars, inputs.bigrams, inputs.lengths)
            for optimiser in optimisers:
                optimiser.zero_grad()
            (loss / predicted).backward()
            torch.nn.utils.clip_grad_norm_(dense, config.clip)
            for optimiser in optimisers:
                optimiser.step()
            seen += int(inputs.lengths.sum())
            out_of_time = time.time() - started > budget
            if out_of_time or time.time() - last_report > 600:
                history.append({"minutes": (time.time() - started) / 60, "characters_seen": seen, "held_out_bits_per_char": bits_per_char(network, featuriser, held_out, batch_size)})
                print(history[-1], file=sys.stderr, flush=True)
                last_report = time.time()
            if out_of_time:
                break
        if time.time() - started > budget:
            break
    if history[-1]["characters_seen"] != seen:
        history.append({"minutes": (time.time() - started) / 60, "characters_seen": seen, "held_out_bits_per_char": bits_per_char(network, featuriser, held_out, batch_size)})
        print(history[-1], file=sys.stderr, flush=True)
    record = {
        "characters_seen": seen,
        "held_out_bits_per_char": history[-1]["held_out_bits_per_char"],
        "minutes": (time.time() - started) / 60,
        "training_chunks": len(train_chunks),
        "unlabelled_lines": len(lines),
        "history": history,
    }
    names = ("char_embedding.weight", "bigram_embedding.weight")
    state = {name: tensor for name, tensor in network.state_dict().items() if name in names or name.startswith(("forward_rnn.", "backward_rnn."))}
    network_shape = {"char_dim": config.network.char_dim, "bigram_dim": config.network.bigram_dim, "hidden_size": config.network.hidden_size}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": KIND, "chars": char_vocab.items, "bigrams": bigram_vocab.items, "network": network_shape, "state": state, "record": record}, out)
    print(f"language models written to {out} ({record['minutes']:.1f} min)", file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the TOML of the run to fine-tune: its network, vocabulary and pretrained tables")
    parser.add_argument("--out", required=True, help="the checkpoint, e.g. runs/pretrained/lm.pt (the config's encoder_init)")
    parser.add_argument("--minutes", type=float, default=0.0, help="time budget (0 = none)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the text")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit-lines", type=int, default=0, help="the first N lines of unlabelled text (0 = all)")
    parser.add_argument("--data-dir", help="the extra-data folder with text/ (default: the config's data_dir, else ../shared/data)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = TrainConfig.from_toml(args.config)
    if args.data_dir:
        config = config.model_copy(update={"data_dir": args.data_dir})
    pretrain(config, Path(args.out), args.minutes, args.epochs, args.dropout, args.batch_size, args.limit_lines, not args.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
