"""The training configuration: one TOML per trained model (training/configs/), read by `TrainConfig.from_toml`."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.network import NetworkConfig


class TrainConfig(BaseModel):
    """Every option of a training run; a TOML key that is not here, or a value of the wrong
    type, is an error naming the file and the key."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    version: str = "1.0.0"
    pd98_train: str = "pd98-train"
    pd98_dev: str = "pd98-dev"
    # NER corpora, into the one NER head unless ner_head_of says otherwise (types mapped to PER/LOC/ORG by training.corpora)
    ner_train: list[str] = Field(default_factory=lambda: ["msra-train"])
    ner_dev: list[str] = Field(default_factory=lambda: ["msra-dev"])
    ner_repeat: dict[str, int] = Field(default_factory=dict)  # a training corpus's sentences this many times per epoch (default 1)
    # Which NER head a training corpus trains: 0 (default) is the served head; 1, 2, ... are
    # training-only heads for corpora whose guidelines differ, dropped from the bundle.
    ner_head_of: dict[str, int] = Field(default_factory=dict)
    data_dir: str = ""  # the extra-data folder (cluener, resume, text); "" = ../shared/data
    # Pretrained inputs (training only; the bundle carries the fine-tuned tables):
    lac_source: str = ""  # LAC-2.1.2.tar.gz (`make lac`): character table from LAC's, its characters added to the vocabulary
    bigram_vectors: str = ""  # gensim KeyedVectors (`python -m training.pretrained`): bigram table initialised from them
    # The BiLSTM and both tables from forward and backward character language models (`python -m
    # training.lm`), fine-tuned from there; applied after lac_source and bigram_vectors.
    encoder_init: str = ""
    # Fine-tuning: a bundle whose vocabularies, labels, network settings and weights the run starts
    # from (the pretrained options above are then not used); dev selection starts from its figures,
    # so the run keeps the bundle's own weights unless an epoch beats them.
    init_from: str = ""
    # Distillation: a bundle (the teacher) whose vocabularies, labels, tables, dictionary projection
    # and CRF transitions the run starts from, with its own network settings (a smaller hidden
    # size: a faster network). Every batch then also trains every head towards the teacher's
    # per-character label distributions, gold labels or not (task_weights["distil"], default 1).
    # With init_from as well, a distillation goes on from a bundle distilled from this teacher.
    teacher: str = ""
    distil_temperature: float = 1.0
    # With teacher: start the encoder and heads from the teacher's, keeping in each direction the
    # hidden_size units whose outputs the heads lean on most (`training.train.prune_teacher`),
    # instead of from random weights; dev selection then starts from the pruned network's figures.
    prune_teacher: bool = False
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
    task_weights: dict[str, float] = Field(default_factory=dict)
    seed: int = 42
    threads: int = 1
    network: NetworkConfig = Field(default_factory=NetworkConfig)

    @model_validator(mode="after")
    def _corpus_options_name_training_corpora(self) -> TrainConfig:
        for key in ("ner_repeat", "ner_head_of"):
            stray = set(getattr(self, key)) - set(self.ner_train)
            if stray:
                raise ValueError(f"{key} names {sorted(stray)}, which are not in ner_train {self.ner_train}")
        if self.prune_teacher and (not self.teacher or self.init_from):
            raise ValueError("prune_teacher starts a distillation: it needs teacher, and not init_from (which continues one)")
        return self

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.model_validate(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except ValidationError as error:
            raise ValueError(f"{path}: {error}") from error
