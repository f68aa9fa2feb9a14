"""Pretrained inputs for the embedding tables: Baidu LAC's character table and vectors
trained with gensim on unlabelled text. Training only: a bundle carries the fine-tuned
tables, so serving needs neither LAC nor gensim.

    python -m training.pretrained --out runs/pretrained/bigrams-48.kv   # bigram vectors (gensim)

LAC (`lac==2.1.2` source distribution, Apache-2.0) ships `LAC/lac_model/model/word_emb`, a
PaddlePaddle tensor file: bytes 16-19 a little-endian int32 D, a tensor description of D
bytes from byte 20, then the float32 rows (58,224 x 128), in the order of
`LAC/lac_model/conf/word.dic` (`id<TAB>token`). LAC looks a character up after its
`conf/q2b.dic` mapping (full-width to half-width, traditional to simplified); so do we.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import logging
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from model.text import atomise
from model.vocab import Vocab, bigrams
from training.config import TrainConfig

LAC_FILES = {"table": "LAC/lac_model/model/word_emb", "words": "LAC/lac_model/conf/word.dic", "q2b": "LAC/lac_model/conf/q2b.dic"}
HOW_TO_GET_LAC = "get it with `make lac` (pip download --no-deps lac==2.1.2)"


class PretrainedError(RuntimeError):
    """A pretrained source is missing or not what it should be; the message names the file."""


def _lac_members(source: Path) -> dict[str, bytes]:
    """The three LAC files, from the source distribution (.tar.gz) or an unpacked copy of it."""
    if source.is_dir():
        found = {}
        for key, relative in LAC_FILES.items():
            path = next((p for p in (source / relative, *source.glob(f"*/{relative}")) if p.is_file()), None)
            if path is None:
                raise PretrainedError(f"{source}: no {relative} inside; {HOW_TO_GET_LAC}")
            found[key] = path.read_bytes()
        return found
    if not source.is_file():
        raise PretrainedError(f"{source}: not found; {HOW_TO_GET_LAC}")
    try:
        with tarfile.open(source) as archive:
            names = {name.split("/", 1)[-1]: name for name in archive.getnames()}
            missing = [relative for relative in LAC_FILES.values() if relative not in names]
            if missing:
                raise PretrainedError(f"{source}: {missing} missing; is this LAC-2.1.2.tar.gz? {HOW_TO_GET_LAC}")
            return {key: archive.extractfile(names[relative]).read() for key, relative in LAC_FILES.items()}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise PretrainedError(f"{source}: not a readable .tar.gz ({error}); {HOW_TO_GET_LAC}") from error


def read_lac(source: str | Path) -> tuple[dict[str, int], np.ndarray, dict[str, str]]:
    """LAC's token -> row index, its (rows, 128) float32 table and its q2b character mapping
    (read once per source: training asks for the characters, then for their rows)."""
    return _read_lac(str(Path(source).resolve()))


@functools.cache
def _read_lac(path: str) -> tuple[dict[str, int], np.ndarray, dict[str, str]]:
    source = Path(path)
    files = _lac_members(source)
    index = {}
    for line in files["words"].decode("utf-8").splitlines():
        number, _, token = line.partition("\t")
        if number.strip().isdigit() and token:
            index[token] = int(number)
    q2b = {}
    for line in files["q2b"].decode("utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0] and parts[1]:
            q2b[parts[0]] = parts[1]
    raw = files["table"]
    described = int.from_bytes(raw[16:20], "little") if len(raw) >= 20 else -1
    data = raw[20 + described :] if described >= 0 else b""
    rows = max(index.values(), default=-1) + 1
    if described < 0 or rows == 0 or len(data) % (4 * rows):
        raise PretrainedError(f"{source}: {LAC_FILES['table']} is not a {rows}-row float32 tensor file; {HOW_TO_GET_LAC}")
    table = np.frombuffer(data, dtype="<f4").reshape(rows, -1)
    return index, table, q2b


def lac_characters(source: str | Path) -> list[str]:
    """Characters LAC's table has a vector for (directly or through q2b), in its row order:
    added to the character vocabulary, so that characters the labelled corpora lack
    (modern names, brands, traditional forms) are not all <unk>."""
    index, _, q2b = read_lac(source)
    known = [token for token in index if len(token) == 1]
    return known + [char for char, target in q2b.items() if len(char) == 1 and target in index]


def lac_rows(items: list[str], source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """For each vocabulary item (a model-string character), LAC's vector after the q2b
    mapping, and whether LAC has one (placeholders and rare characters do not)."""
    index, table, q2b = read_lac(source)
    vectors = np.zeros((len(items), table.shape[1]), dtype=np.float32)
    found = np.zeros(len(items), dtype=bool)
    for i, item in enumerate(items):
        row = index.get(q2b.get(item, item))
        if row is not None and i > 2:  # never the padding, unknown or <bos> rows
            vectors[i], found[i] = table[row], True
    return vectors, found


def set_rows(embedding: torch.nn.Embedding, vectors: np.ndarray, found: np.ndarray, std: float | None) -> int:
    """Copy the `found` rows of `vectors` into `embedding`, scaled so that their standard
    deviation is `std` (the table's own initialisation: the learning rates were tuned for it),
    or as they are with `std` None. Returns how many rows were set."""
    if vectors.shape[1] != embedding.embedding_dim:
        raise PretrainedError(f"pretrained vectors have {vectors.shape[1]} dimensions, the table {embedding.embedding_dim}: set the table's dimension to match")
    chosen = vectors[found]
    if not len(chosen):
        return 0
    scaled = chosen if std is None else chosen * (std / max(float(chosen.std()), 1e-8))
    with torch.no_grad():
        embedding.weight[torch.from_numpy(np.flatnonzero(found))] = torch.from_numpy(scaled).to(embedding.weight.dtype)
    return int(found.sum())


def vector_rows(items: list[str], path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """For each vocabulary item, its vector in gensim KeyedVectors saved at `path`, and whether it has one."""
    from gensim.models import KeyedVectors

    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: not found; make it with `python -m training.pretrained --out {path}` (or `make pretrain`)")
    vectors = KeyedVectors.load(str(path))
    out = np.zeros((len(items), vectors.vector_size), dtype=np.float32)
    found = np.zeros(len(items), dtype=bool)
    for i, item in enumerate(items):
        if i > 2 and item in vectors.key_to_index:
            out[i], found[i] = vectors[item], True
    return out, found


def initialise_tables(network: torch.nn.Module, config: TrainConfig, chars: Vocab, bigram_vocab: Vocab) -> dict:
    """Pretrained rows into the `char_embedding` and `bigram_embedding` tables of `network` (the
    tagger's, or the language models' of training.lm), as configured; what was done, for the metadata."""
    done = {}
    std = None if config.pretrained_own_scale else config.network.embedding_init_std
    if config.lac_source:
        rows = set_rows(network.char_embedding, *lac_rows(chars.items, config.lac_source), std)
        done["chars"] = {"source": "Baidu LAC 2.1.2 lac_model word_emb (Apache-2.0), through its q2b.dic", "rows": rows, "of": len(chars), "licence": "Apache-2.0"}
    if config.bigram_vectors:
        rows = set_rows(network.bigram_embedding, *vector_rows(bigram_vocab.items, config.bigram_vectors), std)
        done["bigrams"] = {"source": f"gensim skip-gram on the unlabelled text and training splits ({Path(config.bigram_vectors).name})", "rows": rows, "of": len(bigram_vocab), "licence": "derived from the corpora above"}
    for table, figures in done.items():
        print(f"pretrained {table}: {figures['rows']} of {figures['of']} rows", file=sys.stderr)
    return done


def unlabelled_lines(folder: Path) -> Iterator[str]:
    """Lines of every *.txt.gz in `folder` (../shared/data/text: Weibo posts, reviews)."""
    files = sorted(folder.glob("*.txt.gz"))
    if not files:
        raise PretrainedError(f"{folder}: no *.txt.gz files of unlabelled text; point --data-dir at ../shared/data")
    for file in files:
        with gzip.open(file, "rt", encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if line:
                    yield line


class BigramSentences:
    """A restartable iterable of bigram sequences (gensim makes several passes)."""

    def __init__(self, model_texts: list[str]):
        self.model_texts = model_texts

    def __iter__(self) -> Iterator[list[str]]:
        for text in self.model_texts:
            yield bigrams(text)


def train_bigram_vectors(texts: Iterable[str], dim: int, epochs: int = 3, min_count: int = 2, seed: int = 42, workers: int = 1):
    """Skip-gram word2vec (gensim) over the character bigrams of the texts' model strings,
    the same bigrams the network looks up."""
    from gensim.models import Word2Vec

    model_texts = [atomise(text).model_text for text in texts]
    model = Word2Vec(BigramSentences(model_texts), vector_size=dim, window=5, min_count=min_count, sg=1, negative=5, epochs=epochs, seed=seed, workers=workers)
    return model.wv


def pretraining_texts(data: str | Path | None, corpora: Iterable[str]) -> list[str]:
    """The unlabelled text plus the texts of the named training splits (never a test split)."""
    from training.corpora import data_dir, load_corpus

    corpora = list(corpora)
    held_out = [name for name in corpora if not name.endswith("-train")]
    if held_out:
        raise PretrainedError(f"pretraining reads training splits only, not {held_out}")
    texts = list(unlabelled_lines(data_dir(data) / "text"))
    for name in corpora:
        texts += [example.text for example in load_corpus(name, data=data)]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to save the KeyedVectors (e.g. runs/pretrained/bigrams-48.kv)")
    parser.add_argument("--dim", type=int, default=48, help="vector size: the network's bigram_dim")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--data-dir", help="the extra-data folder (default ../shared/data)")
    parser.add_argument("--corpora", default="pd98-train,msra-train,cluener-train,resume-train", help="training splits whose text is added")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)  # gensim reports its progress through logging
    started = time.time()
    texts = pretraining_texts(args.data_dir, [name for name in args.corpora.split(",") if name])
    print(f"{len(texts)} texts, {sum(map(len, texts))} characters", file=sys.stderr)
    vectors = train_bigram_vectors(texts, args.dim, args.epochs, args.min_count)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    vectors.save(str(out))
    print(f"{len(vectors)} bigram vectors of {args.dim} dimensions in {(time.time() - started) / 60:.1f} min: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
