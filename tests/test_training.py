"""Training options whose effect shows in the bundle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from model.artifact import build_network, load_bundle
from training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
WEIGHT = "rnn.weight_hh_l0"


def distance_from_initial(bundle: Path, seed: int) -> float:
    """Largest change of one RNN weight between the network as initialised and the bundle."""
    network, metadata = load_bundle(bundle)
    torch.manual_seed(seed)  # train() draws nothing from torch's generator before it builds the network
    initial = build_network(metadata)
    return float((network.state_dict()[WEIGHT] - initial.state_dict()[WEIGHT]).abs().max())


def test_ema_bundle_holds_the_averaged_weights(tmp_path: Path) -> None:
    """With a decay this close to 1 the average hardly leaves the weights after the first
    update, while the last weights of the same run have moved on: the bundle must hold the
    average."""
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    train(replace(config, ema_decay=0.0), tmp_path / "last", progress=False)
    train(replace(config, ema_decay=0.999999), tmp_path / "averaged", progress=False)
    moved = distance_from_initial(tmp_path / "last", config.seed)
    averaged = distance_from_initial(tmp_path / "averaged", config.seed)
    assert moved > 0.02
    assert averaged < 0.01
