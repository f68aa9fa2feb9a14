"""Same text, same answer: each sentence tagged alone, then again under 64-client load.

    python -m bench.same_answer [--model model/artifacts/default] [--sentences 500] [--rounds 3] [--server-env NER_PRECISION=fp32]

`ner-serve` with default settings (one worker) tags each of the first `--sentences` msra-test
sentences alone, one request at a time; then, `--rounds` times, 64 clients send all of them
again at once (each client its own share, so batches mix different texts in varying order and
padding). Prints how many answers differ from the same text alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.http_load import server
from training.corpora import load_corpus

CLIENTS = 64


def tag(client: httpx.Client, text: str) -> dict:
    response = client.post("/tag", json={"text": text}, timeout=120)
    response.raise_for_status()
    return response.json()["results"][0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.same_answer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="model/artifacts/default")
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", help="an NER_* setting for the server")
    parser.add_argument("--json", type=Path, help="also write the rounds and settings here")
    args = parser.parse_args(argv)
    sentences = [example.text for example in load_corpus("msra-test")[: args.sentences]]
    env = dict(item.split("=", 1) for item in args.server_env)
    with tempfile.TemporaryDirectory() as folder, server(args.model, env, Path(folder) / "server.log") as (_, url):
        with httpx.Client(base_url=url) as client:
            alone = [tag(client, text) for text in sentences]

        def send_share(share: list[int]) -> list[tuple[int, dict]]:
            with httpx.Client(base_url=url) as client:
                return [(index, tag(client, sentences[index])) for index in share]

        rounds = []
        for round_number in range(args.rounds):
            order = list(range(len(sentences)))
            order = order[round_number:] + order[:round_number]  # other neighbours each round
            shares = [order[i::CLIENTS] for i in range(CLIENTS)]
            with ThreadPoolExecutor(CLIENTS) as pool:
                answers = [pair for share in pool.map(send_share, shares) for pair in share]
            differing = [index for index, answer in answers if answer != alone[index]]
            rounds.append({"answers": len(answers), "differing": len(differing), "examples": [sentences[i] for i in differing[:3]]})
            print(json.dumps(rounds[-1], ensure_ascii=False), flush=True)
    total = sum(r["answers"] for r in rounds)
    differing = sum(r["differing"] for r in rounds)
    print(f"{differing} of {total} answers under {CLIENTS}-client load differ from the same text alone ({env or 'default settings'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"server_env": env, "clients": CLIENTS, "sentences": len(sentences), "answers": total, "differing": differing, "rounds": rounds}
        args.json.write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
