"""Model bundles: a folder with a TorchScript network and a metadata JSON.

    BUNDLE/network.pt      torch.jit.script(TaggerNetwork), eval mode
    BUNDLE/metadata.json   `BundleMetadata`: format version, vocabularies, label sets, config,
                           corpora and splits, evaluation figures, training record

The metadata can be read without torch (`read_metadata`), e.g. by `GET /model`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from model.network import NetworkConfig, TaggerNetwork
from model.scripting import owned_by_torchscript

FORMAT_VERSION = 1
NETWORK_FILE = "network.pt"
METADATA_FILE = "metadata.json"


class BundleError(RuntimeError):
    """A bundle is missing, corrupt or of another format; the message says which file and what to do."""


class Vocabularies(BaseModel):
    """Each table's items in row order. An item listed twice would leave which row a string
    gets to a lookup's tie-breaking, which differs from CPU to CPU: refused."""

    chars: list[str]
    bigrams: list[str]
    words: list[str] | None = None  # only networks with SoftLexicon word vectors

    @field_validator("chars", "bigrams", "words")
    @classmethod
    def each_item_once(cls, items: list[str] | None) -> list[str] | None:
        if items is not None and len(set(items)) != len(items):
            repeated = [item for item, count in Counter(items).items() if count > 1]
            raise ValueError(f"{len(repeated)} items listed more than once (e.g. {repeated[:3]}); a bundle written before repeats were dropped, retrain it")
        return items


class Labels(BaseModel):
    """Each head's labels in id order: seg (BMES), POS (BMES x tag), NER (BIOES x type and O)."""

    seg: list[str]
    pos: list[str]
    ner: list[str]


class CorpusUse(BaseModel):
    train: str | list[str]
    dev: str | list[str]
    source: str


class PretrainedTable(BaseModel):
    source: str
    rows: int  # rows initialised from it
    of: int  # rows in the table
    licence: str


class TrainingRecord(BaseModel):
    best_epoch: int
    epochs_run: int
    minutes: float
    hardware: str
    torch: str
    git_commit: str
    seed: int
    finished: str  # UTC, ISO 8601
    # A fine-tuning run (training.config's init_from): how the bundle it started from was trained.
    started_from: TrainingRecord | None = None


class ModelDescription(BaseModel):
    """What a bundle says about its model, all but the vocabularies: what `GET /model` shows
    and the model card renders."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    max_len: int  # atoms per chunk
    lexicon_features: int
    labels: Labels
    config: dict[str, Any]  # the run's training.config.TrainConfig; its "network" holds NetworkConfig's fields
    corpora: dict[str, CorpusUse] = {}  # "seg+pos" and "ner"
    pretrained: dict[str, PretrainedTable] = {}  # "chars", "bigrams"
    corpus_sizes: dict[str, tuple[int, int]] = {}  # split -> (sentences, characters)
    training: TrainingRecord | None = None  # None until training has ended
    evaluation: dict[str, Any] = {}  # "dev" (the selected epoch's) and test figures by split (training.model_card)

    def network_config(self) -> NetworkConfig:
        return NetworkConfig(**self.config["network"])


class BundleMetadata(ModelDescription):
    """The whole of metadata.json: the description, the vocabularies and the format version."""

    vocab: Vocabularies
    format_version: int = FORMAT_VERSION

    def description(self) -> ModelDescription:
        """The same without the vocabularies (150k bigram strings, about 12 MB of Python objects)."""
        return ModelDescription(**{name: getattr(self, name) for name in ModelDescription.model_fields})

    def write(self, folder: Path) -> None:
        (folder / METADATA_FILE).write_text(self.model_dump_json(indent=1, exclude_none=True), encoding="utf-8")


def save_bundle(path: str | Path, network: torch.nn.Module, metadata: BundleMetadata) -> Path:
    """Script `network` (unless it is a ScriptModule already) and write it, in eval mode, with
    `metadata` into the folder `path`."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = network.training
    network.eval()
    scripted = network if isinstance(network, torch.jit.ScriptModule) else torch.jit.script(network)
    scripted.save(str(folder / NETWORK_FILE))
    network.train(was_training)
    metadata.model_copy(update={"format_version": FORMAT_VERSION}).write(folder)
    return folder


def build_network(metadata: BundleMetadata, network_class: type | None = None) -> torch.nn.Module:
    """A fresh (eager, untrained) TaggerNetwork (or `network_class`, a subclass) shaped as the
    bundle's metadata describes."""
    labels, vocab = metadata.labels, metadata.vocab
    return (network_class or TaggerNetwork)(
        metadata.network_config(),
        len(vocab.chars),
        len(vocab.bigrams),
        metadata.lexicon_features,
        labels.seg,
        labels.pos,
        labels.ner,
        len(vocab.words or []),
    )


def read_metadata(path: str | Path) -> BundleMetadata:
    """The validated metadata of the bundle at `path`."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder}: no such folder. Set the model path to a bundle folder (it holds {NETWORK_FILE} and {METADATA_FILE}), e.g. model/artifacts/default.")
    file = folder / METADATA_FILE
    if not file.is_file():
        raise BundleError(f"{file}: missing. The bundle is incomplete; copy the whole bundle folder again or retrain it.")
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{file}: corrupt, not valid JSON ({error}). Restore the bundle from the repository or retrain it.") from error
    if not isinstance(metadata, dict):
        raise BundleError(f"{file}: corrupt, expected a JSON object. Restore the bundle or retrain it.")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{file}: bundle format version {version!r}, this code reads version {FORMAT_VERSION}. Retrain the model with this version (python -m training.train) or use a matching release.")
    try:
        return BundleMetadata.model_validate(metadata)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in error.errors()[:5])
        raise BundleError(f"{file}: corrupt ({problems}). Restore the bundle or retrain it.") from error


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, BundleMetadata]:
    """The scripted network (on `device`, eval mode) and the metadata of the bundle at `path`."""
    metadata = read_metadata(path)
    file = Path(path) / NETWORK_FILE
    if not file.is_file():
        raise BundleError(f"{file}: missing. The bundle is incomplete; copy the whole bundle folder again or retrain it.")
    try:
        network = torch.jit.load(str(file), map_location=device)
    except Exception as error:  # torch raises RuntimeError, ValueError or zip errors
        raise BundleError(f"{file}: corrupt, TorchScript could not load it ({type(error).__name__}: {str(error).splitlines()[0][:200]}). Restore the bundle or retrain it.") from error
    network.eval()
    return network, metadata


PRECISIONS = ("fp32", "int8", "fp16")


def eager_copy(network: torch.jit.ScriptModule, metadata: BundleMetadata) -> torch.nn.Module:
    """The bundle's weights in an eager TaggerNetwork of the current code, eval mode."""
    eager = build_network(metadata)
    eager.load_state_dict(network.state_dict())
    return eager.eval()


def half_precision(network: torch.jit.ScriptModule, metadata: BundleMetadata, device: str | torch.device) -> torch.jit.ScriptModule:
    """A copy for the GPU whose embeddings, dictionary projection and RNN run in fp16; the
    heads and CRFs stay fp32 (TaggerNetwork.encode hands them fp32 states). Scripted again
    from the current code at load time, as `quantise` does."""
    eager = eager_copy(network, metadata)
    encoder = [eager.char_embedding, eager.bigram_embedding, eager.lexicon_projection, eager.rnn]
    if eager.has_words:
        encoder.append(eager.word_embedding)
    for module in encoder:
        module.half()
    return owned_by_torchscript(torch.jit.script(eager.to(device)).eval(), device)


def reexport(path: str | Path) -> list[str]:
    """Re-script the bundle's weights with the current network code (e.g. after a faster
    decoder was written); returns the names of stored tensors the current code has no use for."""
    scripted, metadata = load_bundle(path)
    network = build_network(metadata)
    state = scripted.state_dict()
    wanted = network.state_dict().keys()
    unused = sorted(set(state) - set(wanted))
    network.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    save_bundle(path, network, metadata)
    return unused


if __name__ == "__main__":
    import sys

    for bundle in sys.argv[1:]:
        print(bundle, "re-exported; unused tensors:", reexport(bundle))
