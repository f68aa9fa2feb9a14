"""Silver NER data for self-training: text without labels tagged by an ensemble of trained bundles.

    python -m training.silver --teacher model/artifacts/default --teacher runs/out_L --teacher runs/out_N \\
        --corpus pd98-train --limit 20000 --out runs/silver/pd98-train.char.bmes
    python -m training.silver --teacher ... --unlabelled --limit 15000 --out runs/silver/text.char.bmes
    python -m training.silver --teacher ... --score-on msra-dev --limit 100000   # each teacher's F1 and the vote's

Each teacher tags every text (fp32, NER only). An entity goes into the silver data when at
least `--min-votes` teachers (default: more than half) found the same span with the same type;
with more than half, two kept spans can never overlap. The output is a char-tags file (a
character and its BMES tag per line, a blank line between sentences), which a config's
`ner_train` names like any corpus, so the student learns the ensemble's answers on text the
labelled corpora do not cover.

Texts come from a training split (never a dev or test split: dev selects the model, test
measures it) or from the unlabelled text of ../shared/data/text (`--unlabelled`). Texts with
whitespace or unprintable characters are skipped: the char-tags format cannot hold them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from model.artifact import BundleError
from model.schemes import Span, encode
from model.tagger import Tagger
from training.corpora import SOURCE_SUFFIX, corpus_info, data_dir, load_corpus
from training.pretrained import unlabelled_lines
from training.scoring import span_scores


class SilverError(ValueError):
    """A request this tool cannot serve, said so that the user can fix it."""


def voted_entities(predictions: Sequence[Sequence[set[Span]]], min_votes: int) -> list[list[Span]]:
    """Per text, the spans that at least `min_votes` teachers found (`predictions[teacher][text]`)."""
    if not predictions or min_votes * 2 <= len(predictions):
        raise SilverError(f"min_votes must be more than half of the {len(predictions)} teachers, not {min_votes}, so that kept spans cannot overlap")
    voted = []
    for per_text in zip(*predictions, strict=True):
        votes = Counter(span for spans in per_text for span in spans)
        voted.append(sorted(span for span, count in votes.items() if count >= min_votes))
    return voted


def teacher_entities(bundle: str | Path, texts: Sequence[str], batch_size: int = 128) -> list[set[Span]]:
    """The entities `bundle` finds in each text (fp32)."""
    tagger = Tagger.load(bundle, "cpu", precision="fp32")
    return [{(e.start, e.end, e.type) for e in result.entities} for result in tagger.tag(list(texts), tasks=["ner"], batch_size=batch_size)]


def vote_scores(teachers: Sequence[str], split: str, limit: int, min_votes: int, data: str | Path | None = None) -> list[tuple[str, float]]:
    """Each teacher's exact-span NER F1 on the first `limit` sentences of a dev split, and the vote's."""
    if not split.endswith("-dev"):
        raise SilverError(f"{split!r}: teachers are scored on a dev split (e.g. msra-dev); test splits only measure the shipped model")
    examples = load_corpus(split, data=data)[:limit]
    gold = [set(example.entities or ()) for example in examples]
    predictions = [teacher_entities(teacher, [example.text for example in examples]) for teacher in teachers]
    vote = span_scores(gold, [set(spans) for spans in voted_entities(predictions, min_votes)])["f1"]
    return [(teacher, span_scores(gold, spans)["f1"]) for teacher, spans in zip(teachers, predictions)] + [(f"vote of at least {min_votes}", vote)]


def writable(text: str) -> bool:
    return all(char.isprintable() and not char.isspace() for char in text)


def sample_texts(texts: Iterable[str], limit: int, seed: int, max_chars: int) -> list[str]:
    """Up to `limit` distinct texts of 2 to `max_chars` characters that the char-tags format can
    hold, drawn at random (fixed `seed`)."""
    kept = sorted({text for text in texts if 2 <= len(text) <= max_chars and writable(text)})
    random.Random(seed).shuffle(kept)
    return kept[:limit]


def source_texts(corpus: str | None, data: str | Path | None) -> Iterable[str]:
    """The texts of a training split, or (corpus None) the unlabelled text of the data folder."""
    if corpus is None:
        return unlabelled_lines(data_dir(data) / "text")
    if not corpus.endswith("-train"):
        raise SilverError(f"{corpus!r}: silver data comes from a training split (e.g. pd98-train) or --unlabelled text; dev splits select the model and test splits measure it")
    return (example.text for example in load_corpus(corpus, data=data))


# The unlabelled text's terms, as ../shared/data/README.md states them.
UNLABELLED = {
    "source": "../shared/data/text: Weibo posts and comments (thunlp/Chinese_Rumor_Dataset, CED) and product, hotel and food-delivery reviews (SophonPlus/ChineseNlpCorpus)",
    "licence": "none stated by the sources (CED asks users to cite its paper)",
}


def source_info(corpus: str | None, teachers: Sequence[str], min_votes: int) -> dict[str, str]:
    """Where the silver texts and their labels come from, for the model card."""
    if corpus is None:
        text = UNLABELLED
    else:
        info = corpus_info(corpus)
        text = {"source": f"{corpus} ({info['source']})", "licence": info["licence"]}
    voters = ", ".join(teachers)
    return {"source": f"{text['source']}, NER labels by a vote of at least {min_votes} of the bundles {voters}", "licence": text["licence"]}


def write_char_tags(path: Path, texts: Sequence[str], entities: Sequence[Sequence[Span]], info: dict[str, str]) -> None:
    """The texts and their spans as a char-tags corpus, with `info` in the SOURCE_SUFFIX file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for text, spans in zip(texts, entities, strict=True):
            handle.writelines(f"{char} {tag}\n" for char, tag in zip(text, encode(list(spans), len(text))))
            handle.write("\n")
    Path(str(path) + SOURCE_SUFFIX).write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", action="append", required=True, help="a bundle folder; give several (an odd number)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="a training split, e.g. pd98-train")
    source.add_argument("--unlabelled", action="store_true", help="the *.txt.gz files of the data folder's text/")
    source.add_argument("--score-on", metavar="DEV_SPLIT", help="write nothing: each teacher's and the vote's NER F1 on the first --limit sentences of a dev split (to choose teachers)")
    parser.add_argument("--data-dir", help="the extra-data folder (default ../shared/data beside the project)")
    parser.add_argument("--limit", type=int, default=20000, help="texts to tag (default 20000)")
    parser.add_argument("--max-chars", type=int, default=300, help="longest text kept (default 300)")
    parser.add_argument("--min-votes", type=int, help="teachers that must agree on an entity (default: more than half)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="the char-tags file to write (not with --score-on)")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.score_on is None):
        parser.error("give --out to write silver data, or --score-on to score the teachers")
    torch.set_num_threads(args.threads)
    min_votes = args.min_votes or len(args.teacher) // 2 + 1
    try:
        if args.score_on is not None:
            for name, f1 in vote_scores(args.teacher, args.score_on, args.limit, min_votes, args.data_dir):
                print(f"{args.score_on} NER F1 {f1:.4f}  {name}")
            return 0
        texts = sample_texts(source_texts(args.corpus, args.data_dir), args.limit, args.seed, args.max_chars)
        predictions = []
        for teacher in args.teacher:
            predictions.append(teacher_entities(teacher, texts))
            print(f"{teacher}: {sum(map(len, predictions[-1])):,} entities", flush=True)
        voted = voted_entities(predictions, min_votes)
    except (SilverError, BundleError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_char_tags(args.out, texts, voted, source_info(args.corpus, args.teacher, min_votes))
    found = sum(map(len, voted))
    print(f"{args.out}: {len(texts):,} texts, {sum(map(len, texts)):,} characters, {found:,} entities found by at least {min_votes} of {len(args.teacher)} teachers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
