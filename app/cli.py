"""`ner-tag`: tag texts in-process and write JSONL, one result per input text.

    ner-tag 江泽民在北京大学发表讲话。 张三去了上海。
    echo 张三去了上海。 | ner-tag
    ner-tag --file texts.txt --output tagged.jsonl --tasks seg,ner

Each output line has the shape of one item of `POST /tag`'s "results".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from itertools import islice

import orjson
import torch
from tqdm import tqdm

from app.settings import get_settings
from model.artifact import PRECISIONS
from model.tagger import TASKS, Tagger, check_tasks
from model.user_dict import UserDictionaryError


def batched(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(lines)
    while batch := list(islice(iterator, size)):
        yield batch


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="ner-tag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="*", help="texts to tag (default: read stdin, one text per line)")
    parser.add_argument("--file", help="read texts from this file, one per line")
    parser.add_argument("--output", help="write JSONL here (default: stdout)")
    parser.add_argument("--model", default=settings.model_path, help="bundle folder (default: NER_MODEL_PATH or the shipped model)")
    parser.add_argument("--device", default=settings.device, help="auto, cpu or cuda")
    parser.add_argument("--precision", default=settings.precision, choices=list(PRECISIONS), help="int8: quantised, CPU only; fp16: for CUDA")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of seg,pos,ner")
    parser.add_argument("--user-dict", default=settings.user_dict, help="user dictionary: word [freq] [pos] [type] per line (default: NER_USER_DICT)")
    parser.add_argument("--dict-mode", default=settings.user_dict_mode, choices=["forced", "features"], help="forced: entries always hold (default); features: they only feed the dictionary features")
    parser.add_argument("--whole-names", action=argparse.BooleanOptionalAction, default=settings.whole_names, help="one token per person's name, tagged nr")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per batch")
    parser.add_argument("--threads", type=int, default=settings.torch_threads, help="torch intra-op threads")
    args = parser.parse_args(argv)

    try:
        tasks = check_tasks(t.strip() for t in args.tasks.split(",") if t.strip())
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    tagger = Tagger.load(args.model, args.device, precision=args.precision)
    if args.user_dict:
        try:
            user_dict = tagger.load_dictionary(args.user_dict, forced=args.dict_mode == "forced")
        except UserDictionaryError as error:
            parser.error(str(error))
        print(f"user dictionary {args.user_dict}: {len(user_dict)} entries ({args.dict_mode}), {len(user_dict.rejected)} rejected lines", file=sys.stderr)
        for rejected in user_dict.rejected:
            print(f"  line {rejected.line_number} rejected ({rejected.reason}): {rejected.line!r}", file=sys.stderr)

    if args.texts:
        lines: Iterable[str] = args.texts
        total = len(args.texts)
        source = None
    else:
        source = open(args.file, encoding="utf-8") if args.file else sys.stdin
        lines = (line.rstrip("\r\n") for line in source)
        total = None
    output = open(args.output, "wb") if args.output else sys.stdout.buffer
    progress = tqdm(total=total, unit="text", disable=not args.file, file=sys.stderr)
    try:
        for batch in batched(lines, args.batch_size):
            for result in tagger.tag(batch, tasks, whole_names=args.whole_names):
                output.write(orjson.dumps(result.to_dict()) + b"\n")
            progress.update(len(batch))
    finally:
        progress.close()
        if source not in (None, sys.stdin):
            source.close()
        if args.output:
            output.close()
        else:
            output.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
