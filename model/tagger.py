"""Tagger: text in, tokens with POS and entities with offsets out.

    tagger = Tagger.load("model/artifacts/default")
    [result] = tagger.tag(["江泽民在北京大学发表讲话。"])

The work is split in three steps so that a server can pool chunks of many requests
into one batch: `prepare` (text -> chunks of model string), `infer` (a batch of chunks
-> model inputs -> labels, one forward pass), `assemble` (labels -> result with offsets
into the original text). `tag` runs all three for a list of texts. The model inputs
are computed in `infer`, for the whole batch at once: the dictionary step is
vectorised across texts, and a server's queue holds only strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.artifact import PRECISIONS, half_precision, load_bundle
from model.features import Featuriser
from model.int8 import quantise
from model.lexicon import Lexicon
from model.memory import freeze_long_lived_objects, release_free_memory
from model.schemes import decode
from model.text import SPACE, Atoms, atomise, chunk_ranges
from model.vocab import Vocab

TASKS = ("seg", "pos", "ner")
WHITESPACE_POS = "w"  # PKU tag for punctuation; whitespace runs are tokens too


@dataclass(slots=True)
class Token:
    text: str
    start: int
    end: int
    pos: str | None = None


@dataclass(slots=True)
class Entity:
    text: str
    type: str
    start: int
    end: int


@dataclass
class TagResult:
    text: str
    tokens: list[Token] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Chunk:
    """A piece of one text that the model tags in one sequence."""

    atom_start: int
    atom_end: int
    model_text: str

    def __len__(self) -> int:
        return self.atom_end - self.atom_start


@dataclass
class PreparedText:
    text: str
    atoms: Atoms
    chunks: list[Chunk]


@dataclass
class ChunkLabels:
    seg: list[str] | None
    pos: list[str] | None
    ner: list[str] | None


def check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """The tasks as a tuple; ValueError naming any unknown task."""
    tasks = tuple(tasks)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    return tasks


class Tagger:
    """Wraps a network (scripted or eager) and the metadata that describes its inputs."""

    def __init__(self, network: torch.nn.Module, metadata: dict[str, Any], device: str | torch.device = "cpu", lexicon: Lexicon | None = None):
        self.network = network
        # Without the vocabularies (150k bigram strings, about 12 MB): after this constructor
        # they live only in the featuriser's lookup tables.
        self.metadata = {key: value for key, value in metadata.items() if key != "vocab"}
        self.device = torch.device(device)
        self.precision = "fp32"
        self.max_len: int = metadata["max_len"]
        self.labels: dict[str, list[str]] = metadata["labels"]
        self.lexicon = lexicon or Lexicon()
        self.featuriser = Featuriser(
            Vocab.from_json(metadata["vocab"]["chars"]),
            Vocab.from_json(metadata["vocab"]["bigrams"]),
            self.lexicon,
            Vocab.from_json(metadata["vocab"]["words"]) if "words" in metadata["vocab"] else None,
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, lexicon: Lexicon | None = None, precision: str = "fp32") -> Tagger:
        """Load a bundle; `device` None means CUDA when available, else CPU.

        `precision` "int8" quantises the RNN and linear layers for the CPU (faster; its
        accuracy is in the model card; on CUDA it means fp32). "fp16" runs the encoder in
        half precision, meant for CUDA (on a CPU it is correct but slower than fp32).
        """
        if device is None or str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        network, metadata = load_bundle(path, device)
        on_cpu = torch.device(device).type == "cpu"
        if precision == "int8" and on_cpu:
            network = quantise(network, metadata)
        elif precision == "fp16":
            network = half_precision(network, metadata, device)
        tagger = cls(network, metadata, device, lexicon)
        tagger.precision = "fp32" if precision == "int8" and not on_cpu else precision
        tagger.featuriser.build_tables()
        freeze_long_lived_objects()
        release_free_memory()
        return tagger

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def version(self) -> str:
        return self.metadata["version"]

    # -- the three steps -------------------------------------------------------

    def prepare(self, text: str) -> PreparedText:
        atoms = atomise(text)
        chunks = [Chunk(start, end, atoms.model_text[start:end]) for start, end in chunk_ranges(atoms, self.max_len)]
        return PreparedText(text, atoms, chunks)

    @torch.inference_mode()
    def infer(self, chunks: Sequence[Chunk], tasks: Sequence[str] = TASKS) -> list[ChunkLabels]:
        """Labels for each chunk, in order, from one forward pass over all of them."""
        if not chunks:
            return []
        want_seg, want_pos, want_ner = (task in tasks for task in TASKS)
        batch = self.featuriser.batch([chunk.model_text for chunk in chunks]).to(self.device)
        if batch.words is None:  # bundles without word vectors take no word inputs
            seg, pos, ner = self.network(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, want_seg, want_pos, want_ner)
        else:
            seg, pos, ner = self.network(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, want_seg, want_pos, want_ner, batch.words, batch.word_weights)
        heads = {}
        for name, ids in (("seg", seg), ("pos", pos), ("ner", ner)):
            if ids.numel() == 0:
                heads[name] = [None] * len(chunks)
                continue
            names = self.labels[name]
            rows = ids.cpu().tolist()
            heads[name] = [[names[k] for k in row[: len(chunk)]] for row, chunk in zip(rows, chunks)]
        return [ChunkLabels(s, p, n) for s, p, n in zip(heads["seg"], heads["pos"], heads["ner"])]

    def assemble(self, prepared: PreparedText, labels: Sequence[ChunkLabels], tasks: Sequence[str] = TASKS) -> TagResult:
        """The result for one text from the labels of its chunks (same order)."""
        text, spans = prepared.text, prepared.atoms.spans
        result = TagResult(text)
        with_tokens = "seg" in tasks or "pos" in tasks
        with_pos = "pos" in tasks
        # Words by atom index; whitespace atoms are words of their own.
        words: list[tuple[int, int, str | None]] = []
        for chunk, chunk_labels in zip(prepared.chunks, labels):
            if with_tokens and chunk_labels.seg is not None:
                tags = chunk_labels.pos if with_pos and chunk_labels.pos is not None else chunk_labels.seg
                for start, end, pos in decode(tags):
                    words.append((chunk.atom_start + start, chunk.atom_start + end, pos))
            if "ner" in tasks and chunk_labels.ner is not None:
                for start, end, kind in decode(chunk_labels.ner):
                    char_start, char_end = spans[chunk.atom_start + start][0], spans[chunk.atom_start + end - 1][1]
                    result.entities.append(Entity(text[char_start:char_end], kind or "", char_start, char_end))
        if with_tokens:
            if SPACE in prepared.atoms.model_text:  # chunks are in order; only spaces need merging in
                words += [(k, k + 1, WHITESPACE_POS) for k, c in enumerate(prepared.atoms.model_text) if c == SPACE]
                words.sort()
            tokens = result.tokens
            for start, end, pos in words:
                char_start, char_end = spans[start][0], spans[end - 1][1]
                tokens.append(Token(text[char_start:char_end], char_start, char_end, pos if with_pos else None))
        return result

    # -- convenience -----------------------------------------------------------

    def tag(self, texts: Sequence[str] | str, tasks: Sequence[str] = TASKS, batch_size: int = 64) -> list[TagResult]:
        """Tag each text; batches are formed across texts, sorted by length."""
        if isinstance(texts, str):
            texts = [texts]
        tasks = check_tasks(tasks)
        prepared = [self.prepare(text) for text in texts]
        flat = [(i, k) for i, p in enumerate(prepared) for k in range(len(p.chunks))]
        flat.sort(key=lambda ik: len(prepared[ik[0]].chunks[ik[1]]))
        labels: dict[tuple[int, int], ChunkLabels] = {}
        for offset in range(0, len(flat), batch_size):
            keys = flat[offset : offset + batch_size]
            outputs = self.infer([prepared[i].chunks[k] for i, k in keys], tasks)
            labels.update(zip(keys, outputs))
        return [
            self.assemble(p, [labels[(i, k)] for k in range(len(p.chunks))], tasks)
            for i, p in enumerate(prepared)
        ]
