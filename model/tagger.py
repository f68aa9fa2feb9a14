"""Tagger: text in, tokens with POS and entities with offsets out.

    tagger = Tagger.load("model/artifacts/default")
    [result] = tagger.tag(["江泽民在北京大学发表讲话。"])

The work is split in three steps so that a server can pool chunks of many requests
into one batch: `prepare` (text -> chunks of model string), `infer` (a batch of chunks
-> model inputs -> label ids, one forward pass -> spans, decoded for the whole batch in
numpy), `assemble` (spans -> result with offsets into the original text). `tag` runs all three for a list of texts. The model inputs
are computed in `infer`, for the whole batch at once: the dictionary step is
vectorised across texts, and a server's queue holds only strings.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.artifact import PRECISIONS, BundleMetadata, eager_copy, half_precision, load_bundle
from model.features import Batch, Featuriser
from model.int8 import quantise
from model.lexicon import Lexicon
from model.memory import freeze_long_lived_objects, release_free_memory
from model.schemes import OUTSIDE, PREFIXES, Span, SpanDecoder, split_label
from model.scripting import owned_by_torchscript
from model.text import SPACE, Atoms, atomise, chunk_ranges
from model.user_dict import NOT_AN_ENTITY, DictEntry, DictMatch, UserDictionary
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


@dataclass(slots=True)
class DictionaryHit:
    """A user-dictionary entry applied to a text (offsets as for tokens)."""

    text: str
    start: int
    end: int
    pos: str | None
    type: str | None


@dataclass
class TagResult:
    text: str
    tokens: list[Token] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TagResultWithDictionary(TagResult):
    """A result that also reports the user-dictionary entries applied (asked for per request)."""

    dictionary: list[DictionaryHit] = field(default_factory=list)


@dataclass
class Chunk:
    """A piece of one text that the model tags in one sequence."""

    atom_start: int
    atom_end: int
    model_text: str
    # User-dictionary entries to force: (start, end) in the chunk's atoms, and the entry.
    forced: list[tuple[int, int, DictEntry]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.atom_end - self.atom_start


@dataclass
class PreparedText:
    text: str
    atoms: Atoms
    chunks: list[Chunk]
    dictionary: list[DictMatch] = field(default_factory=list)  # the entries forced in this text


@dataclass(slots=True)
class ChunkSpans:
    """What a chunk's labels decode to, as (start, end, type) spans in the chunk's atoms: its
    words, typed with their POS tags when POS was asked for, and its entities (None: the
    task was not asked for)."""

    words: list[Span] | None
    entities: list[Span] | None


def check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """The tasks as a tuple; ValueError naming any unknown task."""
    tasks = tuple(tasks)
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    return tasks


class DeviceError(RuntimeError):
    """The device asked for is not there; the message says what to set instead."""


class Tagger:
    """Wraps a network (scripted or eager) and the bundle metadata that describes its inputs."""

    def __init__(self, network: torch.nn.Module, metadata: BundleMetadata, device: str | torch.device = "cpu", lexicon: Lexicon | None = None):
        self.network = network
        # Without the vocabularies: after this constructor they live only in the featuriser's lookup tables.
        self.description = metadata.description()
        self.device = torch.device(device)
        self.precision = "fp32"
        self.max_len = metadata.max_len
        self.labels: dict[str, list[str]] = metadata.labels.model_dump()
        self.lexicon = lexicon or Lexicon()
        # The user dictionary whose entries are forced (`use_dictionary`); empty: nothing forced.
        self.user_dict = UserDictionary()
        self.pos_tags = [split_label(label)[1] for label in self.labels["pos"][:: len(PREFIXES)]]
        self._pos_type_ids = {tag: index for index, tag in enumerate(self.pos_tags)}
        self._ner_label_ids = {label: index for index, label in enumerate(self.labels["ner"])}
        self._span_decoders = {task: SpanDecoder(self.labels[task]) for task in TASKS}
        vocab = metadata.vocab
        self.featuriser = Featuriser(
            Vocab.from_json(vocab.chars),
            Vocab.from_json(vocab.bigrams),
            self.lexicon,
            None if vocab.words is None else Vocab.from_json(vocab.words),
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
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            # Otherwise TorchScript's refusal reads like a corrupt bundle file.
            build = f"CUDA {torch.version.cuda} build, but no device is visible" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(
                f"device {str(device)!r} was asked for, but torch {torch.__version__} sees no CUDA device ({build}). "
                "Set NER_DEVICE=auto or cpu (--device for ner-tag and ner-bulk), or run where a GPU is visible (docker run --gpus all)."
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        network, metadata = load_bundle(path, device)
        on_cpu = torch.device(device).type == "cpu"
        if precision == "int8" and on_cpu:
            network = quantise(network, metadata)
        elif precision == "fp16":
            network = half_precision(network, metadata, device)
        elif "forced" not in [argument.name for argument in network.forward.schema.arguments]:
            # Exported before user-dictionary entries were forced in decoding: the same weights
            # scripted with the current code (int8 and fp16 copies are scripted at load anyway).
            network = owned_by_torchscript(torch.jit.script(eager_copy(network, metadata).to(device)), device)
        tagger = cls(network, metadata, device, lexicon)
        tagger.precision = "fp32" if precision == "int8" and not on_cpu else precision
        tagger.featuriser.build_tables()
        freeze_long_lived_objects()
        release_free_memory()
        return tagger

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def version(self) -> str:
        return self.description.version

    def use_dictionary(self, user_dict: UserDictionary, forced: bool = True) -> None:
        """Make `user_dict` the user dictionary, replacing any earlier one. Its words always feed
        the dictionary features; with `forced` each occurrence is also one token with the entry's
        POS and entity type (model/user_dict.py). Safe while another thread tags."""
        self.lexicon.set_user_words(user_dict.entries.values())
        self.user_dict = user_dict if forced else UserDictionary()

    def load_dictionary(self, path: str | Path, forced: bool = True) -> UserDictionary:
        """Read the user dictionary at `path` (UserDictionaryError if unreadable) and use it;
        returns it, with its rejected lines."""
        user_dict = UserDictionary.read(path)
        self.use_dictionary(user_dict, forced)
        return user_dict

    # -- the three steps -------------------------------------------------------

    def prepare(self, text: str, request_dict: UserDictionary | None = None) -> PreparedText:
        """The text's atoms and chunks, with the user dictionary's occurrences (and those of
        `request_dict`, a request's own entries, which win over it) to force."""
        atoms = atomise(text)
        chunks = [Chunk(start, end, atoms.model_text[start:end]) for start, end in chunk_ranges(atoms, self.max_len)]
        matches = self.user_dict.matches(text, request_dict)
        return PreparedText(text, atoms, chunks, force_in_chunks(matches, atoms, chunks) if matches else [])

    @torch.inference_mode()
    def infer(self, chunks: Sequence[Chunk], tasks: Sequence[str] = TASKS) -> list[ChunkSpans]:
        """Spans for each chunk, in order, from one forward pass over all of them."""
        if not chunks:
            return []
        batch = self.featuriser.batch([chunk.model_text for chunk in chunks])
        return self.chunk_spans(self.label_ids(batch, chunks, tasks), chunks)

    @torch.inference_mode()
    def label_ids(self, batch: Batch, chunks: Sequence[Chunk], tasks: Sequence[str] = TASKS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's (B, T) seg, POS and NER label ids for the chunks' `batch` (an empty
        tensor for a task not asked for), their dictionary entries forced."""
        want_seg, want_pos, want_ner = (task in tasks for task in TASKS)
        batch = batch.to(self.device)
        forced = self.forced_labels(chunks, batch.chars.shape[1])
        if forced is not None:
            return self.network(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, want_seg, want_pos, want_ner, batch.words, batch.word_weights, forced)
        if batch.words is None:  # bundles without word vectors take no word inputs
            return self.network(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, want_seg, want_pos, want_ner)
        return self.network(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, want_seg, want_pos, want_ner, batch.words, batch.word_weights)

    def chunk_spans(self, ids: tuple[torch.Tensor, torch.Tensor, torch.Tensor], chunks: Sequence[Chunk]) -> list[ChunkSpans]:
        """Each chunk's spans from `label_ids`, decoded for the whole batch at once. The POS
        labels mark the same words as the seg labels, with their tags."""
        lengths = [len(chunk) for chunk in chunks]
        seg, pos, ner = ids

        def decoded(task: str, head_ids: torch.Tensor) -> list[list[Span]] | list[None]:
            return [None] * len(chunks) if head_ids.numel() == 0 else self._span_decoders[task].decode(head_ids.cpu().numpy(), lengths)

        words = decoded("pos", pos) if pos.numel() else decoded("seg", seg)
        return [ChunkSpans(w, e) for w, e in zip(words, decoded("ner", ner))]

    def forced_labels(self, chunks: Sequence[Chunk], steps: int) -> torch.Tensor | None:
        """The network's `forced` input for the chunks' dictionary entries: (B, steps, 3) seg
        label, POS type and NER label ids, -1 where free; None when no chunk has an entry."""
        if not any(chunk.forced for chunk in chunks):
            return None
        forced = np.full((len(chunks), steps, 3), -1, dtype=np.int64)
        for row, chunk in enumerate(chunks):
            for start, end, entry in chunk.forced:
                length = end - start
                prefixes = ["S"] if length == 1 else ["B", *["M"] * (length - 2), "E"]
                forced[row, start:end, 0] = [PREFIXES.index(prefix) for prefix in prefixes]
                if entry.pos in self._pos_type_ids:  # another tag is given to the token in `assemble`
                    forced[row, start:end, 1] = self._pos_type_ids[entry.pos]
                if entry.type == NOT_AN_ENTITY:
                    forced[row, start:end, 2] = self._ner_label_ids[OUTSIDE]
                elif entry.type is not None:
                    forced[row, start:end, 2] = [self._ner_label_ids[f"{prefix}-{entry.type}"] for prefix in prefixes]
        return torch.from_numpy(forced)

    def assemble(self, prepared: PreparedText, spans_per_chunk: Sequence[ChunkSpans], tasks: Sequence[str] = TASKS, whole_names: bool = False, report_dictionary: bool = False) -> TagResult:
        """The result for one text from the spans of its chunks (same order). `whole_names`: the
        tokens inside a person's name merged into one token tagged nr (needs seg and ner);
        `report_dictionary`: a TagResultWithDictionary listing the dictionary entries applied."""
        text, bounds = prepared.text, prepared.atoms.bounds
        result: TagResult = TagResultWithDictionary(text) if report_dictionary else TagResult(text)
        if report_dictionary:
            result.dictionary = [DictionaryHit(text[m.start : m.end], m.start, m.end, m.entry.pos, m.entry.type) for m in prepared.dictionary]
        with_tokens = "seg" in tasks or "pos" in tasks
        with_pos = "pos" in tasks
        # Atom k is text[bounds[k]:bounds[k + 1]]; the usual text has one atom per character (no bounds).
        one_per_character = bounds is None
        # Words by atom index; whitespace atoms are words of their own.
        words: list[tuple[int, int, str | None]] = []
        for chunk, spans_of_chunk in zip(prepared.chunks, spans_per_chunk):
            base = chunk.atom_start
            chunk_words = spans_of_chunk.words
            if with_tokens and chunk_words is not None:
                # Dictionary entries with a tag outside the model's set: forced as words, the tag
                # given as it is.
                own_tags = {(start, end): entry.pos for start, end, entry in chunk.forced if entry.pos is not None and entry.pos not in self._pos_type_ids}
                if own_tags:
                    words += [(base + start, base + end, own_tags.get((start, end), pos)) for start, end, pos in chunk_words]
                elif base:
                    words += [(base + start, base + end, pos) for start, end, pos in chunk_words]
                else:
                    words += chunk_words
            if "ner" in tasks and spans_of_chunk.entities is not None:
                if one_per_character:
                    found = [(base + start, base + end, kind) for start, end, kind in spans_of_chunk.entities]
                else:
                    found = [(bounds[base + start], bounds[base + end], kind) for start, end, kind in spans_of_chunk.entities]
                result.entities += [Entity(text[start:end], kind or "", start, end) for start, end, kind in found]
        if with_tokens:
            if SPACE in prepared.atoms.model_text:  # chunks are in order; only spaces need merging in
                words += [(k, k + 1, WHITESPACE_POS) for k, c in enumerate(prepared.atoms.model_text) if c == SPACE]
                words.sort()
            if not one_per_character:
                words = [(bounds[start], bounds[end], pos) for start, end, pos in words]
            if with_pos:
                result.tokens = [Token(text[start:end], start, end, pos) for start, end, pos in words]
            else:
                result.tokens = [Token(text[start:end], start, end) for start, end, _ in words]
            if whole_names and result.entities:
                result.tokens = merge_names(result.tokens, result.entities, "nr" if with_pos else None)
        return result

    # -- convenience -----------------------------------------------------------

    def tag(
        self,
        texts: Sequence[str] | str,
        tasks: Sequence[str] = TASKS,
        batch_size: int = 64,
        extra_entries: Sequence[DictEntry] = (),
        whole_names: bool = False,
        report_dictionary: bool = False,
    ) -> list[TagResult]:
        """Tag each text; batches are formed across texts, sorted by length. `extra_entries`
        are forced as user-dictionary entries for these texts only; `whole_names` and
        `report_dictionary` as in `assemble`."""
        if isinstance(texts, str):
            texts = [texts]
        tasks = check_tasks(tasks)
        request_dict = UserDictionary(extra_entries) if extra_entries else None
        prepared = [self.prepare(text, request_dict) for text in texts]
        flat = [(i, k) for i, p in enumerate(prepared) for k in range(len(p.chunks))]
        flat.sort(key=lambda ik: len(prepared[ik[0]].chunks[ik[1]]))
        spans: dict[tuple[int, int], ChunkSpans] = {}
        for offset in range(0, len(flat), batch_size):
            keys = flat[offset : offset + batch_size]
            outputs = self.infer([prepared[i].chunks[k] for i, k in keys], tasks)
            spans.update(zip(keys, outputs))
        return [
            self.assemble(p, [spans[(i, k)] for k in range(len(p.chunks))], tasks, whole_names, report_dictionary)
            for i, p in enumerate(prepared)
        ]


def force_in_chunks(matches: list[DictMatch], atoms: Atoms, chunks: list[Chunk]) -> list[DictMatch]:
    """Put each match that covers whole atoms of one chunk into that chunk's `forced` list;
    returns those matches (the others, e.g. "B站" in "AB站", cannot be forced)."""
    atom_at_start = {start: index for index, (start, _) in enumerate(atoms.spans)}
    atom_at_end = {end: index for index, (_, end) in enumerate(atoms.spans)}
    chunk_starts = [chunk.atom_start for chunk in chunks]
    applied = []
    for match in matches:
        first, last = atom_at_start.get(match.start), atom_at_end.get(match.end)
        if first is None or last is None:
            continue
        chunk = chunks[bisect.bisect_right(chunk_starts, first) - 1] if chunks else None
        if chunk is None or first < chunk.atom_start or last >= chunk.atom_end:
            continue
        chunk.forced.append((first - chunk.atom_start, last + 1 - chunk.atom_start, match.entry))
        applied.append(match)
    return applied


def merge_names(tokens: list[Token], entities: list[Entity], pos: str | None) -> list[Token]:
    """`tokens` with the tokens that exactly cover a PER entity merged into one (tagged `pos`);
    an entity whose edges fall inside a token leaves the tokens as they are."""
    names = {entity.start: entity for entity in entities if entity.type == "PER"}
    merged: list[Token] = []
    index = 0
    while index < len(tokens):
        token, following = tokens[index], index + 1
        name = names.get(token.start)
        if name is not None:
            stop = following
            while stop < len(tokens) and tokens[stop].end <= name.end:
                stop += 1
            if stop - index > 1 and tokens[stop - 1].end == name.end:
                token, following = Token(name.text, name.start, name.end, pos), stop
        merged.append(token)
        index = following
    return merged
