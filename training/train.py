"""Multi-task training: PD98 -> seg + pos, MSRA (+ CLUENER, Resume) -> ner, one shared encoder.
The configuration is training/config.py, the data as the network reads it training/data.py;
here are the optimiser, the loop (weight averaging, early stopping) and the CLI.

    python -m training.train --config training/configs/default.toml [--out DIR] [--data-dir DIR]

Writes the bundle (network.pt + metadata.json), report.json and curve.png to the
output folder. Dev figures each epoch, early stopping on the selection figure
(`dev_figures`), the best epoch kept; the test splits are never read here.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.artifact import (
    BundleMetadata,
    CorpusUse,
    Labels,
    TrainingRecord,
    Vocabularies,
    build_network,
    eager_copy,
    load_bundle,
    save_bundle,
)
from model.features import Batch, Featuriser
from model.lexicon import Lexicon
from model.network import NetworkConfig, TaggerNetwork
from model.schemes import make_labels
from model.tagger import TASKS, Tagger
from model.text import atomise
from model.vocab import Vocab
from training.config import TrainConfig
from training.corpora import CORPORA, Example, corpus_info, load_corpus
from training.data import label_tensor, load_training, make_batches, to_sequences, vocabularies
from training.evaluate import score
from training.lm import initialise_encoder
from training.pretrained import initialise_tables


class Optimiser:
    """Adam for dense weights, SparseAdam for the embedding tables (only rows in the batch
    change, which keeps a 150k-row bigram table cheap), gradient clipping, loss per character.

    Tasks are weighted by `task_weights`: unweighted, the POS loss (176 classes) is several
    times the NER loss, Adam's per-weight scaling of the shared encoder then follows POS
    gradients almost only, and NER stalled on dev. Dividing each loss by its running mean
    (tried, since removed) lifted NER but held seg and POS back (training/configs/default.toml).
    """

    def __init__(
        self,
        network: TaggerNetwork,
        learning_rate: float,
        clip: float,
        task_weights: dict[str, float] | None = None,
        embedding_learning_rate: float = 0.0,
        lr_decay: float = 1.0,
    ):
        self.network = network
        self.clip = clip
        self.task_weights = task_weights or {}
        self.sparse = [p for n, p in network.named_parameters() if "embedding" in n]
        self.dense = [p for n, p in network.named_parameters() if "embedding" not in n]
        self.optimisers = [torch.optim.Adam(self.dense, lr=learning_rate), torch.optim.SparseAdam(self.sparse, lr=embedding_learning_rate or learning_rate)]
        self.schedules = [torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=lr_decay) for optimiser in self.optimisers]

    def step(
        self,
        batch: Batch,
        seg: torch.Tensor | None,
        pos: torch.Tensor | None,
        ner: torch.Tensor | None,
        ner_head: int = 0,
        teacher: TaggerNetwork | None = None,
        temperature: float = 1.0,
    ) -> float:
        """One update on `batch` (towards `teacher`'s scores as well, when given); returns the
        summed (unweighted) loss."""
        soft = None if teacher is None else teacher.head_scores(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, batch.words, batch.word_weights)
        losses = self.network.loss(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, seg, pos, ner, batch.words, batch.word_weights, ner_head, soft, temperature)
        chars = int(batch.lengths.sum())
        objective = 0.0
        for task, loss in losses.items():
            per_char = loss / chars
            objective = objective + self.task_weights.get(task, 1.0) * per_char
        for optimiser in self.optimisers:
            optimiser.zero_grad()
        objective.backward()
        torch.nn.utils.clip_grad_norm_(self.dense, self.clip)
        for optimiser in self.optimisers:
            optimiser.step()
        return float(sum(loss.item() for loss in losses.values()))

    def end_epoch(self) -> None:
        """The learning rates decay by `lr_decay` per epoch."""
        for schedule in self.schedules:
            schedule.step()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} torch thread(s)"


def dev_figures(report: dict) -> float:
    """The selection (and early-stopping) figure: the mean of seg F1, POS F1 and NER F1,
    where NER F1 is the mean over the NER dev corpora (msra-dev, cluener-dev, resume-dev
    count alike: the in-domain figure must not buy the out-of-domain ones, or the reverse)."""
    values = [report[task]["f1"] for task in ("seg", "pos") if task in report]
    by_corpus = report.get("ner_by_corpus") or ({"ner": report["ner"]} if "ner" in report else {})
    if by_corpus:
        values.append(sum(figures["f1"] for figures in by_corpus.values()) / len(by_corpus))
    return sum(values) / len(values)


def epoch_entry(epoch: int, loss_per_char: float, report: dict, seconds: float, started: float) -> dict:
    """One line of the training history (stderr, report.json, the curve)."""
    return {
        "epoch": epoch,
        "train_loss_per_char": loss_per_char,
        "dev": {task: report[task]["f1"] for task in TASKS if task in report},
        "dev_ner_by_corpus": {name: figures["f1"] for name, figures in report["ner_by_corpus"].items()},
        "dev_mean_f1": dev_figures(report),
        "seconds": seconds,
        "elapsed_minutes": (time.time() - started) / 60,
    }


def starting_bundle_inputs(bundle: str, start: BundleMetadata, pos_types: list[str], ner_types: list[str]) -> tuple[Vocab, Vocab, Vocab | None, dict]:
    """The vocabularies and labels of the bundle a fine-tuning or distillation run starts from
    (its weights are indexed by them). Training data with a POS or entity type the bundle has no
    label for is an error: that label would have no weights."""
    labels = start.labels.model_dump()
    new_types = sorted({f"POS {t}" for t in pos_types if f"B-{t}" not in labels["pos"]} | {f"entity {t}" for t in ner_types if f"B-{t}" not in labels["ner"]})
    if new_types:
        raise ValueError(f"{bundle}: the training data has types the bundle has no labels for ({', '.join(new_types)}); train from scratch instead")
    words = Vocab.from_json(start.vocab.words) if start.vocab.words else None
    return Vocab.from_json(start.vocab.chars), Vocab.from_json(start.vocab.bigrams), words, labels


# What a distilled network takes from its teacher: whatever does not depend on the encoder's size.
TAKEN_FROM_TEACHER = ("char_embedding.", "bigram_embedding.", "word_embedding.", "lexicon_projection.", "seg_crf.", "ner_crf.")


def start_from_teacher(student: TaggerNetwork, teacher: TaggerNetwork, bundle: str) -> None:
    """Copy the teacher's tables, dictionary projection and CRF transitions into `student`; the
    student's settings for them (char_dim, bigram_dim, lexicon_dim, word_dim) must be the teacher's."""
    own = student.state_dict()
    taken = {name: weight for name, weight in teacher.state_dict().items() if name.startswith(TAKEN_FROM_TEACHER)}
    misfits = sorted(name for name, weight in taken.items() if name not in own or own[name].shape != weight.shape)
    if misfits:
        raise ValueError(f"{bundle}: the teacher's {', '.join(misfits)} do not fit this network; give it the teacher's char_dim, bigram_dim, lexicon_dim and word_dim")
    student.load_state_dict(taken, strict=False)


PRUNING_SAMPLE = 2048  # training sentences whose hidden states rank the teacher's units


def prune_teacher(student: TaggerNetwork, teacher: TaggerNetwork, samples: list[Batch]) -> float:
    """Start `student`'s encoder and served heads from `teacher`'s, keeping in each direction
    the student's hidden_size units of the teacher's that the heads lean on most: a unit's mean
    square output over `samples` times the squared weights each head gives it (each head's
    weights scaled to sum 1, so the 180 POS labels do not outvote the 4 seg labels). The other
    units and every weight into or out of them are dropped. Returns the share of that measure kept."""
    size, kept_size = teacher.hidden_size, student.hidden_size
    shapes = {"cell": (type(student.rnn), type(teacher.rnn)), "layers": (student.rnn.num_layers, teacher.rnn.num_layers), "merge": (student.merge, teacher.merge)}
    differ = [name for name, (own, theirs) in shapes.items() if own != theirs]
    if differ or student.rnn.num_layers != 1 or student.merge != "concat" or kept_size > size:
        raise ValueError(f"prune_teacher needs a one-layer encoder with merge = \"concat\", and the teacher's cell, at most the teacher's hidden size ({size}); this one differs in {differ or 'its size or shape'}")
    heads = ("seg_head", "pos_head", "ner_head")
    with torch.no_grad():
        squares, positions = torch.zeros(2 * size), 0
        for batch in samples:
            hidden = teacher.encode(batch.chars, batch.bigrams, batch.lexicon, batch.lengths, batch.words, batch.word_weights).data.cpu()
            squares += hidden.square().sum(0)
            positions += hidden.shape[0]
        own = {name: weight.cpu() for name, weight in teacher.state_dict().items()}
        reliance = sum(own[f"{head}.weight"].square().sum(0) / own[f"{head}.weight"].square().sum() for head in heads)
        importance = squares / max(positions, 1) * reliance
        forward, backward = (half.topk(kept_size).indices.sort().values for half in (importance[:size], importance[size:]))
        state = {}
        for suffix, units in (("_l0", forward), ("_l0_reverse", backward)):
            rows = torch.cat([gate * size + units for gate in range(own[f"rnn.weight_ih{suffix}"].shape[0] // size)])  # every gate's rows of the kept units
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                weight = own[f"rnn.{name}{suffix}"][rows]
                state[f"rnn.{name}{suffix}"] = weight[:, units] if name == "weight_hh" else weight
        columns = torch.cat([forward, size + backward])
        for head in heads:
            state[f"{head}.weight"] = own[f"{head}.weight"][:, columns]
            state[f"{head}.bias"] = own[f"{head}.bias"]
    student.load_state_dict(state, strict=False)
    return float(importance[columns].sum() / importance.sum())


def train(config: TrainConfig, out: Path, progress: bool = True) -> dict:
    started = time.time()
    commit = git_commit()  # the code this process runs, not what is checked out when it ends
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def limited(examples: list[Example], limit: int) -> list[Example]:
        return examples[:limit] if limit else examples

    data = config.data_dir or None
    pd98_train, ner_train_by_corpus = load_training(config)
    ner_train = [e for examples in ner_train_by_corpus for e in examples]
    pd98_dev = limited(load_corpus(config.pd98_dev), config.limit_dev)
    ner_dev = {name: limited(load_corpus(name, data=data), config.limit_dev) for name in config.ner_dev}

    pos_types = sorted({w[2] for e in pd98_train for w in e.words})
    ner_types = sorted({s[2] for e in ner_train for s in e.entities})
    lexicon = Lexicon()
    starting_bundle = config.init_from or config.teacher
    if starting_bundle:
        start_network, start = load_bundle(starting_bundle)
        char_vocab, bigram_vocab, word_vocab, labels = starting_bundle_inputs(starting_bundle, start, pos_types, ner_types)
        if config.init_from:  # fine-tuning: the bundle's network settings replace the config's
            config.network = NetworkConfig(**start.config["network"])
    else:
        model_texts = [atomise(e.text).model_text for e in pd98_train + ner_train]
        char_vocab, bigram_vocab = vocabularies(config, model_texts)
        labels = {"seg": make_labels(None, False), "pos": make_labels(pos_types, False), "ner": make_labels(ner_types, True)}
        word_vocab = Vocab.build(lexicon.matched_words(model_texts), config.word_min_count) if config.network.word_dim > 0 else None
    featuriser = Featuriser(char_vocab, bigram_vocab, lexicon, word_vocab)
    if word_vocab is not None:
        print(f"words {len(word_vocab)}", file=sys.stderr)
    print(f"chars {len(char_vocab)}, bigrams {len(bigram_vocab)}, pos labels {len(labels['pos'])}, ner labels {len(labels['ner'])}", file=sys.stderr)
    pd98_sequences = to_sequences(pd98_train, labels, config.max_len)
    ner_sequences = []
    for name, examples in zip(config.ner_train, ner_train_by_corpus):
        sequences = to_sequences(examples * config.ner_repeat.get(name, 1), labels, config.max_len)
        for sequence in sequences:
            sequence.ner_head = config.ner_head_of.get(name, 0)
        ner_sequences += sequences
    train_chars = sum(len(s.text) for s in pd98_sequences + ner_sequences)
    print(f"training sequences: pd98 {len(pd98_sequences)}, ner {len(ner_sequences)} ({', '.join(config.ner_train)}), {train_chars} atoms", file=sys.stderr)

    num_words = len(word_vocab) if word_vocab else 0
    teacher = None
    if config.teacher:
        teacher_network, teacher_metadata = load_bundle(config.teacher) if config.init_from else (start_network, start)
        if (teacher_metadata.vocab, teacher_metadata.labels) != (start.vocab, start.labels):
            raise ValueError(f"{config.teacher}: the teacher's vocabularies or labels are not those of {config.init_from}; continue a distillation from a bundle distilled from this teacher")
        teacher = eager_copy(teacher_network, teacher_metadata).to(device)
    aux_heads = max(config.ner_head_of.values(), default=0)
    network = TaggerNetwork(config.network, len(char_vocab), len(bigram_vocab), Lexicon.size, labels["seg"], labels["pos"], labels["ner"], num_words, aux_heads)
    if config.init_from:
        # the bundle holds no training-only NER heads: those of this run's ner_head_of start fresh
        missing, unexpected = network.load_state_dict(start_network.state_dict(), strict=False)
        if unexpected or any(not name.startswith("aux_ner_") for name in missing):
            raise ValueError(f"{config.init_from}: its weights do not fit this network (missing {missing}, unexpected {unexpected})")
        pretrained = dict(start.pretrained)  # where the tables first came from; config.init_from says the rest
    elif teacher is not None:
        start_from_teacher(network, teacher, config.teacher)
        if config.prune_teacher:
            sequences = pd98_sequences + ner_sequences
            sample = random.Random(config.seed).sample(sequences, min(PRUNING_SAMPLE, len(sequences)))
            samples = [featuriser.batch([s.text for s in sample[i : i + 256]]).to(device) for i in range(0, len(sample), 256)]
            share = prune_teacher(network, teacher, samples)
            print(f"pruned the teacher's encoder to {config.network.hidden_size} units per direction, keeping {share:.1%} of the heads' reliance on its units", file=sys.stderr)
        pretrained = dict(start.pretrained)  # as for init_from; config.teacher says the rest
    else:
        pretrained = initialise_tables(network, config, char_vocab, bigram_vocab)
    if config.encoder_init:
        pretrained["encoder"] = initialise_encoder(network, config.encoder_init, char_vocab, bigram_vocab)
    network = network.to(device)
    optimiser = Optimiser(network, config.learning_rate, config.clip, config.task_weights, config.embedding_learning_rate, config.lr_decay)
    averaged = None
    if config.ema_decay:
        averaged = torch.optim.swa_utils.AveragedModel(network, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay))
    kept = averaged.module if averaged is not None else network  # what is evaluated and shipped

    metadata = BundleMetadata(
        name=config.name,
        version=config.version,
        max_len=config.max_len,
        lexicon_features=Lexicon.size,
        vocab=Vocabularies(chars=char_vocab.to_json(), bigrams=bigram_vocab.to_json(), words=word_vocab.to_json() if word_vocab else None),
        labels=Labels(**labels),
        config=config.model_dump(),
        corpora={
            "seg+pos": CorpusUse(train=config.pd98_train, dev=config.pd98_dev, source=CORPORA["pd98"]["source"]),
            "ner": CorpusUse(train=config.ner_train, dev=config.ner_dev, source="; ".join(corpus_info(name)["source"] for name in config.ner_train)),
        },
        pretrained=pretrained,
        corpus_sizes={
            name: (len(examples), sum(len(e.text) for e in examples))
            for name, examples in [(config.pd98_train, pd98_train), (config.pd98_dev, pd98_dev), *zip(config.ner_train, ner_train_by_corpus), *ner_dev.items()]
        },
    )

    # The bundle's network is scripted now, from the code that trains, and takes the trained
    # weights at the end: TorchScript compiles from the source files, and scripting at the end
    # read them as they were then (a file edited during an 82-minute run made its export fail).
    # Building it draws from torch's generator, which training must not see.
    with torch.random.fork_rng(devices=[]):
        exported = torch.jit.script(build_network(metadata).eval())

    def evaluate_dev() -> dict:
        kept.eval()
        tagger = Tagger(kept, metadata, device, lexicon)
        report = score(pd98_dev, tagger.tag([e.text for e in pd98_dev]))  # each epoch starts with network.train()
        tagged = {name: (examples, tagger.tag([e.text for e in examples])) for name, examples in ner_dev.items()}
        report["ner_by_corpus"] = {name: score(examples, results)["ner"] for name, (examples, results) in tagged.items()}
        report["ner"] = score([e for examples, _ in tagged.values() for e in examples], [r for _, results in tagged.values() for r in results])["ner"]
        return report

    rng = random.Random(config.seed)
    history, best, best_score, best_epoch, stale = [], None, -math.inf, 0, 0
    if config.init_from or config.prune_teacher:  # epoch 0: the network as it starts, the figure an epoch must beat
        best_report = evaluate_dev()
        best, best_score = copy.deepcopy(kept.state_dict()), dev_figures(best_report)
        history.append(epoch_entry(0, 0.0, best_report, 0.0, started))
        print(json.dumps(history[-1]), file=sys.stderr, flush=True)
    budget = config.time_budget_minutes * 60 if config.time_budget_minutes else math.inf
    for epoch in range(1, config.epochs + 1):
        network.train()
        # NER batches by head: a batch trains one NER head
        batches = make_batches(pd98_sequences, config.batch_size, rng)
        for head in range(aux_heads + 1):
            batches += make_batches([s for s in ner_sequences if s.ner_head == head], config.batch_size, rng)
        rng.shuffle(batches)
        total_loss, total_chars, epoch_start = 0.0, 0, time.time()
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, mininterval=5)
        for batch in bar:
            tensors = featuriser.batch([s.text for s in batch]).to(device)
            steps = tensors.chars.shape[1]
            gold = [label_tensor(batch, task, steps) for task in TASKS]
            golds = (None if t is None else t.to(device) for t in gold)
            total_loss += optimiser.step(tensors, *golds, ner_head=batch[0].ner_head, teacher=teacher, temperature=config.distil_temperature)
            if averaged is not None:
                averaged.update_parameters(network)
            total_chars += int(tensors.lengths.sum())
            bar.set_postfix(loss=f"{total_loss / total_chars:.4f}", refresh=False)
            if time.time() - started > budget:
                break
        optimiser.end_epoch()
        report = evaluate_dev()
        dev_score = dev_figures(report)
        history.append(epoch_entry(epoch, total_loss / max(total_chars, 1), report, time.time() - epoch_start, started))
        print(json.dumps(history[-1]), file=sys.stderr, flush=True)
        if dev_score > best_score:
            best, best_score, best_epoch, stale = copy.deepcopy(kept.state_dict()), dev_score, epoch, 0
            best_report = report
        else:
            stale += 1
        if stale >= config.patience or time.time() - started > budget:
            break

    network.load_state_dict(best)  # the averaged weights when ema_decay is set: same names, same shapes
    network.drop_aux_heads()
    minutes = (time.time() - started) / 60
    metadata.training = TrainingRecord(
        best_epoch=best_epoch,
        epochs_run=history[-1]["epoch"],  # training epochs: a fine-tuning run's epoch 0 is the bundle it started from
        minutes=minutes,
        hardware=hardware(),
        torch=torch.__version__,
        git_commit=commit,
        seed=config.seed,
        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        started_from=start.training if starting_bundle else None,
    )
    metadata.evaluation = {"dev": best_report}
    exported.load_state_dict(network.cpu().state_dict())
    save_bundle(out, exported, metadata)
    report = {"history": history, "best_epoch": best_epoch, "dev": best_report, "training": metadata.training.model_dump()}
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    plot_curve(history, out / "curve.png")
    return report


def plot_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    left.plot(epochs, [h["train_loss_per_char"] for h in history], marker="o")
    left.set(title="training loss per character", xlabel="epoch")
    for task in TASKS:
        if task in history[0]["dev"]:
            right.plot(epochs, [h["dev"][task] for h in history], marker="o", label=task)
    right.set(title="dev F1", xlabel="epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="TOML file, e.g. training/configs/default.toml")
    parser.add_argument("--out", help="bundle folder (default model/artifacts/<name>)")
    parser.add_argument("--data-dir", help="the extra-data folder with ner/ and text/ (default: the config's data_dir, else ../shared/data)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = TrainConfig.from_toml(args.config)
    if args.data_dir:
        config.data_dir = args.data_dir
    out = Path(args.out or f"model/artifacts/{config.name}")
    report = train(config, out, progress=not args.no_progress)
    print(json.dumps({"best_epoch": report["best_epoch"], "dev": {t: report["dev"][t]["f1"] for t in TASKS if t in report["dev"]}}))
    print(f"bundle written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
