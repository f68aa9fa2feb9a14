"""Model bundles: a folder with a TorchScript network and a metadata JSON.

    BUNDLE/network.pt      torch.jit.script(TaggerNetwork), eval mode
    BUNDLE/metadata.json   format version, vocabularies, label sets, config,
                           corpora and splits, evaluation figures, training record

The metadata can be read without torch (`read_metadata`), e.g. by `GET /model`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
NETWORK_FILE = "network.pt"
METADATA_FILE = "metadata.json"
REQUIRED_KEYS = ("format_version", "name", "version", "vocab", "labels", "max_len", "lexicon_features")


class BundleError(RuntimeError):
    """A bundle is missing, corrupt or of another format; the message says which file and what to do."""


def save_bundle(path: str | Path, network: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Script `network` and write it with `metadata` into the folder `path`."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = network.training
    network.eval()
    scripted = torch.jit.script(network)
    network.train(was_training)
    scripted.save(str(folder / NETWORK_FILE))
    metadata = {**metadata, "format_version": FORMAT_VERSION}
    (folder / METADATA_FILE).write_text(json.dumps(metadata, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder


def build_network(metadata: dict[str, Any], network_class: type | None = None) -> torch.nn.Module:
    """A fresh (eager, untrained) TaggerNetwork (or `network_class`, a subclass) shaped as the
    bundle's metadata describes."""
    from model.network import NetworkConfig, TaggerNetwork

    labels = metadata["labels"]
    return (network_class or TaggerNetwork)(
        NetworkConfig(**metadata["config"]["network"]),
        len(metadata["vocab"]["chars"]),
        len(metadata["vocab"]["bigrams"]),
        metadata["lexicon_features"],
        labels["seg"],
        labels["pos"],
        labels["ner"],
        len(metadata["vocab"].get("words", [])),
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
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
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise BundleError(f"{file}: corrupt, missing keys {missing}. Restore the bundle or retrain it.")
    return metadata


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
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


def eager_copy(network: torch.jit.ScriptModule, metadata: dict[str, Any]) -> torch.nn.Module:
    """The bundle's weights in an eager TaggerNetwork of the current code, eval mode."""
    eager = build_network(metadata)
    eager.load_state_dict(network.state_dict())
    return eager.eval()


def half_precision(network: torch.jit.ScriptModule, metadata: dict[str, Any], device: str | torch.device) -> torch.jit.ScriptModule:
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


def owned_by_torchscript(network: torch.jit.ScriptModule, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The same module after a save/load round trip, so that no weight has a Python object.

    A tensor that has one (every weight of a module scripted from Python) makes TorchScript
    take the GIL each time a reference to it is dropped during `forward`. In the service the
    event loop holds the GIL most of the time: with a Python thread busy beside it, the int8
    network took 32.6 ms for a batch of 32 instead of 28.2; after the round trip, 29.2.
    """
    buffer = io.BytesIO()
    torch.jit.save(network, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer, map_location=device).eval()


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
