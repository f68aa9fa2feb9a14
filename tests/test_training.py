"""Training options whose effect shows in the bundle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from model.artifact import build_network, load_bundle
from tests.conftest import ROOT
from training.train import TrainConfig, train

WEIGHT = "rnn.weight_hh_l0"


def distance_from_initial(bundle: Path, seed: int) -> float:
    """Largest change of one RNN weight between the network as initialised and the bundle."""
    network, metadata = load_bundle(bundle)
    torch.manual_seed(seed)  # train() draws nothing from torch's generator before it builds the network
    initial = build_network(metadata)
    return float((network.state_dict()[WEIGHT] - initial.state_dict()[WEIGHT]).abs().max())


def test_ema_bundle_holds_the_averaged_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    """With a decay this close to 1 the average hardly leaves the weights after the first
    update, while the last weights of the same recipe without averaging (the session's tiny
    bundle) have moved on: the bundle must hold the average."""
    config = TrainConfig.from_toml(ROOT / "training" / "configs" / "tiny.toml")
    assert not config.ema_decay
    train(replace(config, ema_decay=0.999999), tmp_path / "averaged", progress=False)
    moved = distance_from_initial(tiny_bundle, config.seed)
    averaged = distance_from_initial(tmp_path / "averaged", config.seed)
    assert moved > 0.02
    assert averaged < 0.01
