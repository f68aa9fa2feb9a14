"""Evaluate a trained bundle on the test splits and write its model card.

    python -m training.model_card --model model/artifacts/default

Runs the full test evaluations (msra-test for NER, pd98-test for seg/POS, jieba beside
each), the fixed 500-sentence samples that the tests re-check, stores all figures in
the bundle's metadata.json ("evaluation") and writes MODEL_CARD.md from them. Nothing
here feeds back into training: the figures are recorded, never used for selection.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model.artifact import METADATA_FILE
from model.tagger import Tagger
from training.corpora import load_corpus
from training.evaluate import evaluate, sample, training_words

SAMPLE_SIZE = 500
SAMPLE_CORPORA = ("msra-test", "pd98-test")


def run_evaluations(bundle: Path) -> dict:
    tagger = Tagger.load(bundle, "cpu")
    quantised = Tagger.load(bundle, "cpu", precision="int8")
    train_words = training_words()
    figures: dict = {}
    for corpus in SAMPLE_CORPORA:
        examples = load_corpus(corpus)
        figures[corpus] = evaluate(tagger, examples, True, train_words)
        figures[f"{corpus}-int8"] = evaluate(quantised, examples, False, train_words)
        figures[f"{corpus}-sample{SAMPLE_SIZE}"] = evaluate(tagger, sample(examples, SAMPLE_SIZE), False, train_words)
    return figures


def f(value: float) -> str:
    return f"{value:.4f}"


def render_card(metadata: dict) -> str:
    evaluation = metadata["evaluation"]
    training = metadata["training"]
    config = metadata["config"]
    network = config["network"]
    ner, seg = evaluation["msra-test"], evaluation["pd98-test"]
    lines = [
        f"# Model card: {metadata['name']} {metadata['version']}",
        "",
        "Character-level BiRNN-CRF tagger for Chinese: word segmentation, POS tags (PKU / People's Daily tag set)",
        "and named entities (PER, LOC, ORG) from one shared encoder in one forward pass.",
        "",
        "## Data",
        "",
        "| task | corpus | split |",
        "| --- | --- | --- |",
        f"| seg + POS | {metadata['corpora']['seg+pos']['source']} | train `{config['pd98_train']}`, dev `{config['pd98_dev']}`, test `pd98-test` |",
        f"| NER | {metadata['corpora']['ner']['source']} | train `{config['msra_train']}`, dev `{config['msra_dev']}`, test `msra-test` |",
        "| dictionary features | jieba's dictionary (about 350k words with frequencies and POS) | n/a |",
        "",
        "Test splits were never used for model selection: the best epoch is chosen on the dev splits.",
        "",
        "## Model",
        "",
        f"- inputs: character embedding ({network['char_dim']}), left and right character-bigram embeddings ({network['bigram_dim']} each, "
        f"{len(metadata['vocab']['bigrams'])} bigrams), {metadata['lexicon_features']} jieba dictionary-match features projected to {network['lexicon_dim']}",
        f"- encoder: {network['num_layers']} layer(s) bidirectional {network['cell'].upper()}, hidden {network['hidden_size']} per direction, merge `{network['merge']}`, dropout {network['dropout']}, "
        f"<unk> dropout {network.get('unk_dropout', 0.0)} (training only)",
        "- heads: seg (BMES) and NER (O + BMES x PER/LOC/ORG) with CRFs constrained to valid BMES transitions;"
        f" POS ({len(metadata['labels']['pos'])} labels, BMES x tag) trained per character and decoded by constrained Viterbi inside the segmentation's word boundaries",
        f"- sequences are chunked at sentence punctuation to at most {metadata['max_len']} atoms (a run of Latin letters or digits is one atom)",
        "- exported with TorchScript (`network.pt`); vocabularies, labels and figures in `metadata.json`",
        "",
        "## Training",
        "",
        f"- hardware: {training['hardware']}",
        f"- time: {training['minutes']:.1f} minutes, {training['epochs_run']} epochs (best: epoch {training['best_epoch']}), seed {training['seed']}",
        f"- torch {training['torch']}, git commit `{training['git_commit']}`, finished {training['finished']}",
        f"- config: `training/configs/{metadata['name']}.toml`",
    ]
    if config.get("ema_decay"):
        lines.append(f"- weights: exponential moving average of the training weights (decay {config['ema_decay']} per batch), for dev selection and in the bundle")
    lines += [
        "",
        "## Evaluation (full test splits; jieba on the same sentences in the same run)",
        "",
        "| task | metric | this model | jieba |",
        "| --- | --- | --- | --- |",
        f"| NER (msra-test, {ner['model']['sentences']} sentences) | entity F1 | {f(ner['model']['ner']['f1'])} | {f(ner['jieba.posseg']['ner']['f1'])} (posseg nr/ns/nt) |",
    ]
    for kind in ("PER", "LOC", "ORG"):
        ours, theirs = ner["model"]["ner"]["by_type"][kind], ner["jieba.posseg"]["ner"]["by_type"].get(kind, {"f1": 0.0})
        lines.append(f"| NER {kind} | F1 (P / R) | {f(ours['f1'])} ({f(ours['precision'])} / {f(ours['recall'])}) | {f(theirs['f1'])} |")
    lines += [
        f"| segmentation (pd98-test, {seg['model']['sentences']} lines) | word F1 | {f(seg['model']['seg']['f1'])} | {f(seg['jieba.cut']['seg']['f1'])} (cut) |",
        f"| segmentation | OOV recall | {f(seg['model']['seg']['oov_recall'])} | {f(seg['jieba.cut']['seg']['oov_recall'])} (cut) |",
        f"| POS (pd98-test) | joint span+tag F1 | {f(seg['model']['pos']['f1'])} | {f(seg['jieba.posseg']['pos']['f1'])} (posseg) |",
        "",
        f"int8 (`NER_PRECISION=int8`, dynamic quantisation of the LSTM and linear layers on the CPU), same test splits: "
        f"NER F1 {f(evaluation['msra-test-int8']['model']['ner']['f1'])}, seg F1 {f(evaluation['pd98-test-int8']['model']['seg']['f1'])}, "
        f"POS F1 {f(evaluation['pd98-test-int8']['model']['pos']['f1'])}.",
        "",
        "jieba's POS tags come from its own dictionary tag set (close to, not identical with, PKU), which lowers its POS figure;",
        "jieba's NER figure counts its nr/ns/nt words as PER/LOC/ORG.",
        "",
        f"Fixed samples re-checked by the tests (`tests/test_shipped_model.py`, {SAMPLE_SIZE} sentences, seed 0): "
        + ", ".join(
            f"{corpus} " + " / ".join(f"{task} {f(evaluation[f'{corpus}-sample{SAMPLE_SIZE}']['model'][task]['f1'])}" for task in ("seg", "pos", "ner") if task in evaluation[f"{corpus}-sample{SAMPLE_SIZE}"]["model"])
            for corpus in SAMPLE_CORPORA
        ),
        "",
        "## Reproduce",
        "",
        "```",
        f"make train        # python -m training.train --config training/configs/{metadata['name']}.toml",
        f"python -m training.model_card --model model/artifacts/{metadata['name']}",
        f"python -m training.evaluate --model model/artifacts/{metadata['name']} --corpus msra-test",
        f"python -m training.evaluate --model model/artifacts/{metadata['name']} --corpus pd98-test",
        "```",
        "",
        "## Limits",
        "",
        "- News-domain training data from 1998 (PD98) and MSRA; expect lower accuracy on social media, classical or domain text.",
        "- Segmentation follows the PKU standard (e.g. person names split into surname and given name: 江/nr 泽民/nr),",
        "  while entities follow MSRA (江泽民 is one PER entity).",
        "- Simplified Chinese; traditional characters are mostly unknown to the character vocabulary.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = Path(args.model)
    metadata_file = bundle / METADATA_FILE
    metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    metadata["evaluation"] = {"dev": metadata.get("evaluation", {}).get("dev"), **run_evaluations(bundle)}
    metadata_file.write_text(json.dumps(metadata, ensure_ascii=False, indent=1), encoding="utf-8")
    card = render_card(metadata)
    (bundle / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    print(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
