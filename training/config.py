"""The training configuration: one TOML per trained model (training/configs/), read by `TrainConfig.from_toml`."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from model.network import NetworkConfig


@dataclass
class TrainConfig:
    name: str = "default"
    version: str = "1.0.0"
    pd98_train: str = "pd98-train"
    pd98_dev: str = "pd98-dev"
    # NER corpora, into the one NER head unless ner_head_of says otherwise (types mapped to PER/LOC/ORG by training.corpora)
    ner_train: list[str] = field(default_factory=lambda: ["msra-train"])
    ner_dev: list[str] = field(default_factory=lambda: ["msra-dev"])
    ner_repeat: dict[str, int] = field(default_factory=dict)  # a training corpus's sentences this many times per epoch (default 1)
    # Which NER head a training corpus trains: 0 (default) is the served head; 1, 2, ... are
    # training-only heads for corpora whose guidelines differ, dropped from the bundle.
    ner_head_of: dict[str, int] = field(default_factory=dict)
    data_dir: str = ""  # the extra-data folder (cluener, resume, text); "" = ../shared/data
    # Pretrained inputs (training only; the bundle carries the fine-tuned tables):
    lac_source: str = ""  # LAC-2.1.2.tar.gz (`make lac`): character table from LAC's, its characters added to the vocabulary
    bigram_vectors: str = ""  # gensim KeyedVectors (`python -m training.pretrained`): bigram table initialised from them
    pretrained_own_scale: bool = False  # copy pretrained vectors as they are, not scaled to network.embedding_init_std
    limit_train: int = 0  # sentences per corpus, 0 = all (tiny runs in tests)
    limit_dev: int = 0
    max_len: int = 150
    bigram_min_count: int = 2
    bigram_max_size: int = 200_000
    word_min_count: int = 2  # word vocabulary (network.word_dim > 0): dictionary words seen this often in the training text
    epochs: int = 30
    time_budget_minutes: float = 0.0  # 0 = no limit
    patience: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    embedding_learning_rate: float = 0.0  # 0 = learning_rate
    lr_decay: float = 0.9
    clip: float = 5.0
    # 0 = off. Otherwise dev evaluation, model selection and the bundle use an exponential
    # moving average of the weights (this decay per update): single-epoch weights
    # follow the last few hundred batches, and dev NER moved by +-0.005 from epoch to epoch.
    ema_decay: float = 0.0
    task_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 42
    threads: int = 1
    network: NetworkConfig = field(default_factory=NetworkConfig)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        network = NetworkConfig(**data.pop("network", {}))
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        config = cls(network=network, **data)
        for key in ("ner_repeat", "ner_head_of"):
            stray = set(getattr(config, key)) - set(config.ner_train)
            if stray:
                raise ValueError(f"{path}: {key} names {sorted(stray)}, which are not in ner_train {config.ner_train}")
        return config
