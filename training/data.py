"""Training data as the network reads it: chunked like the tagger's input, gold spans as label
ids, and batches of similar length."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from model.schemes import encode
from model.text import atomise, chunk_ranges
from model.vocab import Vocab, bigrams
from training.config import TrainConfig
from training.corpora import Example, load_corpus
from training.pretrained import lac_characters


@dataclass
class Sequence_:
    text: str  # a chunk's model text, as the tagger reads it (Featuriser.batch makes its inputs)
    seg: list[int] | None
    pos: list[int] | None
    ner: list[int] | None
    ner_head: int = 0


def to_sequences(examples: list[Example], labels: dict[str, list[str]], max_len: int) -> list[Sequence_]:
    """Chunk each example as the tagger does and encode its gold spans as label ids."""
    index = {task: {label: i for i, label in enumerate(names)} for task, names in labels.items()}
    texts, gold = [], []
    for example in examples:
        atoms = atomise(example.text)
        seg_tags = pos_tags = ner_tags = None
        if example.words is not None:
            words = atoms.atom_spans(example.words)
            seg_tags = encode([(s, e, None) for s, e, _ in words], len(atoms))
            pos_tags = encode(words, len(atoms))
        if example.entities is not None:
            ner_tags = encode(atoms.atom_spans(example.entities), len(atoms))
        for start, end in chunk_ranges(atoms, max_len):
            texts.append(atoms.model_text[start:end])
            gold.append(
                (
                    [index["seg"].get(t, 3) for t in seg_tags[start:end]] if seg_tags else None,
                    [index["pos"].get(t, 0) for t in pos_tags[start:end]] if pos_tags else None,
                    [index["ner"].get(t, 0) for t in ner_tags[start:end]] if ner_tags else None,
                )
            )
    return [Sequence_(text, *labels_) for text, labels_ in zip(texts, gold)]


def load_training(config: TrainConfig) -> tuple[list[Example], list[list[Example]]]:
    """The PD98 training sentences and those of each NER training corpus (config order), each
    cut to `limit_train` when set."""
    limit = config.limit_train or None
    data = config.data_dir or None
    return load_corpus(config.pd98_train)[:limit], [load_corpus(name, data=data)[:limit] for name in config.ner_train]


def vocabularies(config: TrainConfig, model_texts: list[str]) -> tuple[Vocab, Vocab]:
    """The character vocabulary (the training text's characters by frequency, then LAC's when
    configured) and the bigram vocabulary of the training text's model strings."""
    char_vocab = Vocab.build(Counter(c for t in model_texts for c in t))
    if config.lac_source:
        char_vocab = Vocab(char_vocab.items + lac_characters(config.lac_source))
    return char_vocab, Vocab.build(Counter(b for t in model_texts for b in bigrams(t)), config.bigram_min_count, config.bigram_max_size)


def make_batches(sequences: list[Sequence_], batch_size: int, rng: random.Random) -> list[list[Sequence_]]:
    """Batches of similar length (less padding), in random order."""
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i].text), rng.random()))
    batches = [[sequences[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def label_tensor(batch: list[Sequence_], task: str, steps: int) -> torch.Tensor | None:
    rows = [getattr(s, task) for s in batch]
    if rows[0] is None:
        return None
    out = np.zeros((len(rows), steps), dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return torch.from_numpy(out)
