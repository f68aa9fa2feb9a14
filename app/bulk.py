"""`ner-bulk`: tag a large corpus once, on a Ray cluster with Ray Data.

    ner-bulk docs.jsonl --output tagged/                      # local Ray on this machine
    ner-bulk 's3://bucket/corpus/*.parquet' --output s3://bucket/tagged --address auto --actors 16
    ner-bulk texts.txt --output tagged/ --format jsonl --device cuda --actors 4

Input: JSONL (a `text` field; other fields such as `id` are carried through), plain text (one
text per line; empty lines are skipped) or Parquet (a text column; other columns carried), as
files, folders or globs, local or any URI pyarrow's filesystems read (s3://, gs://, hdfs://).
Each actor loads the Tagger once; each output row is one result of `POST /tag` (text, tokens,
entities) plus the carried fields and an `error` field. A row without a text, with a text that
is not a string, or with a text over the length limit gets the error and no tags; the job goes on.
JSONL fields are carried as they are into JSONL output; for Parquet output each carried field
must keep one type (Parquet columns are typed).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from app.settings import get_settings
from model.artifact import PRECISIONS
from model.tagger import TASKS, check_tasks

FORMATS = ("jsonl", "text", "parquet")
TOTALS_ACTOR = "ner-bulk-totals"


def input_format(paths: list[str]) -> str:
    """jsonl, text or parquet from the paths' extensions (ValueError when they disagree)."""
    kinds = set()
    for path in paths:
        name = path.rstrip("/").lower()
        if name.endswith((".jsonl", ".json", ".ndjson")):
            kinds.add("jsonl")
        elif name.endswith(".parquet"):
            kinds.add("parquet")
        elif name.endswith(".txt"):
            kinds.add("text")
        else:
            raise ValueError(f"cannot tell the format of {path!r} from its name: give --input-format {'|'.join(FORMATS)}")
    if len(kinds) > 1:
        raise ValueError(f"inputs of different formats ({', '.join(sorted(kinds))}): run one format at a time")
    return kinds.pop()


def expand(paths: list[str]) -> list[str]:
    """Local globs expanded; folders and URIs as given (Ray Data lists them)."""
    expanded = []
    for path in paths:
        if "://" not in path and glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise ValueError(f"no file matches {path!r}")
            expanded += matches
        else:
            expanded.append(path)
    return expanded


class TagRows:
    """Ray Data callable class: one Tagger per actor, loaded once; a batch of input rows (a
    pyarrow Table) in, the same rows with the results out."""

    def __init__(self, model: str, device: str, precision: str, tasks: list[str], text_field: str, jsonl: bool, max_text_chars: int, threads: int, user_dict: str | None, whole_names: bool, totals: Any):
        import torch

        from model.tagger import Tagger

        torch.set_num_threads(threads)
        self.tagger = Tagger.load(model, device, precision=precision)
        if user_dict:
            self.tagger.load_dictionary(user_dict)
        self.tasks, self.text_field, self.jsonl = tuple(tasks), text_field, jsonl
        self.max_text_chars, self.whole_names, self.totals = max_text_chars, whole_names, totals

    def __call__(self, batch):
        import pyarrow as pa
        import ray

        if self.jsonl:
            texts, errors, carried = rows_from_json_lines(batch.column("text").to_pylist(), self.text_field)
        else:
            texts = batch.column(self.text_field).to_pylist() if self.text_field in batch.column_names else [None] * batch.num_rows
            errors = [None] * len(texts)
            carried = {name: batch.column(name) for name in batch.column_names if name != self.text_field}
        errors = [error or self.problem(text) for text, error in zip(texts, errors)]
        good = [index for index, error in enumerate(errors) if error is None]
        results = self.tagger.tag([texts[index] for index in good], self.tasks, whole_names=self.whole_names)
        by_row: list[Any] = [None] * len(texts)
        for index, result in zip(good, results):
            by_row[index] = result
        counts: Counter = Counter(texts=len(good), errors=len(texts) - len(good), characters=sum(len(texts[index]) for index in good))
        counts.update(f"entities_{entity.type}" for result in results for entity in result.entities)
        ray.get(self.totals.add.remote(dict(counts)))
        results = {
            "text": [text if isinstance(text, str) else None for text in texts],
            "tokens": [[token_row(t) for t in r.tokens] if r else [] for r in by_row],
            "entities": [[entity_row(e) for e in r.entities] if r else [] for r in by_row],
            "error": errors,
        }
        if self.jsonl:
            # JSON fields may change type from row to row (an id that is a number here and a
            # string there): pandas blocks of Python objects carry them as they are, where Arrow
            # blocks of different batches failed to merge.
            import pandas as pd

            return pd.DataFrame({**carried, **results})
        types = {"text": pa.string(), "tokens": pa.list_(TOKEN), "entities": pa.list_(ENTITY), "error": pa.string()}
        return pa.table({**carried, **{name: pa.array(values, types[name]) for name, values in results.items()}})

    def problem(self, text: Any) -> str | None:
        if text is None:
            return f"no {self.text_field!r} field"
        if not isinstance(text, str):
            return f"{self.text_field!r} is a {type(text).__name__}, not a string"
        if len(text) > self.max_text_chars:
            return f"the text has {len(text)} characters, the limit is {self.max_text_chars} (--max-text-chars)"
        return None


def rows_from_json_lines(lines: list[str], text_field: str) -> tuple[list[Any], list[str | None], dict[str, list]]:
    """Each JSONL line's text, what is wrong with the line if it is not a JSON object, and the
    other fields as columns of Python values (None where a row lacks the field)."""
    texts: list[Any] = []
    errors: list[str | None] = []
    others: list[dict] = []
    for line in lines:
        try:
            row = orjson.loads(line)
            error = None if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
        except orjson.JSONDecodeError as decode_error:
            error = f"not valid JSON: {decode_error}"
        if error is not None:
            texts.append(None)
            errors.append(error)
            others.append({})
            continue
        texts.append(row.pop(text_field, None))
        errors.append(None)
        others.append(row)
    names = list(dict.fromkeys(name for row in others for name in row))
    carried = {name: [row.get(name) for row in others] for name in names}
    return texts, errors, carried


def token_row(token) -> dict:
    return {"text": token.text, "start": token.start, "end": token.end, "pos": token.pos}


def entity_row(entity) -> dict:
    return {"text": entity.text, "type": entity.type, "start": entity.start, "end": entity.end}


def _arrow_types():
    import pyarrow as pa

    token = pa.struct([("text", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("pos", pa.string())])
    entity = pa.struct([("text", pa.string()), ("type", pa.string()), ("start", pa.int64()), ("end", pa.int64())])
    return token, entity


try:
    TOKEN, ENTITY = _arrow_types()
except ImportError:  # ray[data] (pyarrow) not installed: main() says so
    TOKEN = ENTITY = None


def totals_actor():
    import ray

    @ray.remote(num_cpus=0)
    class Totals:
        """Counts from every batch, for the summary at the end, and when the batches came: the
        characters after the first batch over the time since it measure the steady rate, without
        Ray's start-up and the actors' model loading."""

        def __init__(self) -> None:
            self.counts: Counter = Counter()
            self.first: float | None = None
            self.last = 0.0
            self.after_first = 0

        def add(self, counts: dict) -> None:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            else:
                self.after_first += counts.get("characters", 0)
            self.last = now
            self.counts.update(counts)

        def get(self) -> dict:
            steady = self.after_first / (self.last - self.first) if self.first is not None and self.last > self.first else None
            return {**self.counts, "steady_chars_per_s": steady}

    return Totals.remote()


def run(args: argparse.Namespace) -> dict:
    """Tag the inputs of `args` into args.output; returns the summary."""
    import ray

    paths = expand(args.inputs)
    kind = args.input_format or input_format(paths)
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        # One logical CPU more than the actors take, so that reading and writing tasks can run
        # beside them on a small machine.
        ray.init(num_cpus=max(os.cpu_count() or 1, args.actors + 1), log_to_driver=False, include_dashboard=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output rows in input order
    if kind == "parquet":
        dataset = ray.data.read_parquet(paths)
    else:
        dataset = ray.data.read_text(paths, drop_empty_lines=True)
    totals = totals_actor()
    tagged = dataset.map_batches(
        TagRows,
        batch_size=args.batch_size,
        batch_format="pyarrow",
        concurrency=args.actors,
        num_cpus=0 if args.device == "cuda" else 1,
        num_gpus=1 if args.device == "cuda" else 0,
        fn_constructor_kwargs={
            "model": args.model,
            "device": args.device,
            "precision": args.precision,
            "tasks": list(args.tasks),
            "text_field": "text" if kind == "text" else args.text_field,
            "jsonl": kind == "jsonl",
            "max_text_chars": args.max_text_chars,
            "threads": args.threads,
            "user_dict": args.user_dict,
            "whole_names": args.whole_names,
            "totals": totals,
        },
    )
    started = time.perf_counter()
    if args.format == "parquet":
        from app.parquet_sink import OrderedParquetDatasink

        tagged.write_datasink(OrderedParquetDatasink(args.output))
    else:
        tagged.write_json(args.output, force_ascii=False)
    seconds = time.perf_counter() - started
    counts = ray.get(totals.get.remote())
    ray.shutdown()
    return {
        "texts": counts.get("texts", 0),
        "errors": counts.get("errors", 0),
        "characters": counts.get("characters", 0),
        "entities": {kind: counts.get(f"entities_{kind}", 0) for kind in ("PER", "LOC", "ORG")},
        "seconds": round(seconds, 2),
        "chars_per_s": round(counts.get("characters", 0) / seconds) if seconds > 0 else None,
        "steady_chars_per_s": round(counts["steady_chars_per_s"]) if counts.get("steady_chars_per_s") else None,
        "actors": args.actors,
        "output": args.output,
    }


def parser() -> argparse.ArgumentParser:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="ner-bulk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="files, folders or globs (local or URIs: s3://, gs://, hdfs://)")
    parser.add_argument("--output", required=True, help="output folder (local or a URI); Ray writes one file per block")
    parser.add_argument("--format", default="parquet", choices=["parquet", "jsonl"], help="output format (default parquet)")
    parser.add_argument("--input-format", choices=list(FORMATS), help="default: from the file extensions (.jsonl/.json, .txt, .parquet)")
    parser.add_argument("--text-field", default="text", help="the JSON field or Parquet column holding the text (default text)")
    parser.add_argument("--actors", type=int, default=1, help="tagger actors (each loads the model; one CPU, or one GPU with --device cuda)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per batch handed to an actor")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one GPU per actor")
    parser.add_argument("--precision", default=settings.precision, choices=list(PRECISIONS), help="int8 (default): quantised, CPU; fp16 for CUDA")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of seg,pos,ner")
    parser.add_argument("--model", default=settings.model_path, help="bundle folder, readable from every node (default: the shipped model)")
    parser.add_argument("--user-dict", default=settings.user_dict, help="user dictionary file, readable from every node (forced entries)")
    parser.add_argument("--whole-names", action=argparse.BooleanOptionalAction, default=settings.whole_names, help="one token per person's name")
    parser.add_argument("--max-text-chars", type=int, default=settings.max_text_chars, help="longer texts get an error instead of tags")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per actor (1: one actor per core scales best)")
    parser.add_argument("--address", help="an existing Ray cluster (auto, ray://host:10001); default: start Ray on this machine")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.tasks = check_tasks(t.strip() for t in args.tasks.split(",") if t.strip())
        if not args.input_format:
            input_format(expand(args.inputs))
    except ValueError as error:
        parser().error(str(error))
    if TOKEN is None:
        print("ner-bulk needs Ray Data: pip install 'zh-tagger[bulk]' (ray[data])", file=sys.stderr)
        return 2
    if args.actors < 1 or args.batch_size < 1:
        parser().error("--actors and --batch-size must be at least 1")
    # Actors run in other working directories (and on other nodes): absolute paths.
    args.model = str(Path(args.model).resolve()) if "://" not in args.model else args.model
    args.user_dict = str(Path(args.user_dict).resolve()) if args.user_dict else None
    args.output = str(Path(args.output).resolve()) if "://" not in args.output else args.output
    summary = run(args)
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
