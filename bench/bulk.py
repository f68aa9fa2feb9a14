"""`ner-bulk` throughput on a real two-node Ray cluster on this machine, beside in-process `Tagger.tag`.

    python -m bench.bulk [--repeat 4] [--out bench/results/bulk.json]

Two `ray start` processes (a head and a second node joined to it by `--address`) make the
cluster; `ner-bulk --address` runs on it with 1 and then 2 actors over msra-test repeated
`--repeat` times (JSONL in, Parquet out), int8, one torch thread per actor. In-process is
`Tagger.tag` in this process on the same texts, int8, one thread. Each Ray node declares 2
logical CPUs, so that reading and writing tasks can run beside the actors; the machine's
cores are what they are (`os.cpu_count()`, in the JSON).

Figures: `wall` chars/s over the whole job (Ray start-up and model loading included) and
`steady` chars/s from the first tagged batch on (what a long job approaches).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import torch

from bench.processes import free_port
from bench.throughput import cpu_name
from model.tagger import Tagger
from training.corpora import load_corpus

DEFAULT_OUT = Path("bench/results/bulk.json")
RAY = str(Path(sys.executable).parent / "ray")


def start_cluster(temp: Path) -> str:
    """A head node and a second node process on this host; returns the address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    # A throwaway cluster on localhost: without this, Ray 2.60's token authentication refused the
    # second node ("InvalidAuthToken"). The setting reaches the ray processes and ner-bulk.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    common = ["--num-cpus=2", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *common], check=True, capture_output=True)
    subprocess.run([RAY, "start", f"--address={address}", *common], check=True, capture_output=True)
    return address


def run_bulk(source: Path, output: Path, actors: int, address: str) -> dict:
    command = [sys.executable, "-m", "app.bulk", str(source), "--output", str(output), "--actors", str(actors), "--address", address]
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(run.stdout[run.stdout.index("{") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=4, help="msra-test this many times over")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    texts = [example.text for example in load_corpus("msra-test")] * args.repeat
    characters = sum(len(text) for text in texts)
    torch.set_num_threads(1)
    tagger = Tagger.load("model/artifacts/default", "cpu", precision="int8")
    started = time.perf_counter()
    tagger.tag(texts)
    in_process = characters / (time.perf_counter() - started)
    print(f"in-process Tagger.tag, int8, 1 thread: {in_process:,.0f} chars/s ({len(texts)} texts, {characters:,} chars)")
    del tagger

    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as folder:
        work = Path(folder)
        source = work / "in.jsonl"
        source.write_bytes(b"".join(orjson.dumps({"id": index, "text": text}) + b"\n" for index, text in enumerate(texts)))
        address = start_cluster(work / "ray")
        try:
            for actors in (1, 2):
                summary = run_bulk(source, work / f"out-{actors}", actors, address)
                assert summary["texts"] == len(texts) and summary["errors"] == 0, summary
                runs[actors] = summary
                print(f"ner-bulk, {actors} actor(s): wall {summary['chars_per_s']:,} chars/s, steady {summary['steady_chars_per_s']:,} chars/s ({summary['seconds']} s)")
        finally:
            subprocess.run([RAY, "stop", "--force"], capture_output=True)
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "texts": len(texts),
        "characters": characters,
        "in_process_chars_per_s": round(in_process),
        "ner_bulk": {str(actors): summary for actors, summary in runs.items()},
        "two_over_one_actor": {kind: round(runs[2][key] / runs[1][key], 3) for kind, key in (("wall", "chars_per_s"), ("steady", "steady_chars_per_s"))},
        "one_actor_over_in_process": round(runs[1]["steady_chars_per_s"] / in_process, 3),
        "command": "python -m bench.bulk " + " ".join(argv or sys.argv[1:]),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({key: result[key] for key in ("two_over_one_actor", "one_actor_over_in_process")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
