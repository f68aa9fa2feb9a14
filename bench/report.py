"""Turn the benchmark JSON files into a Markdown table and two plots.

    python -m bench.report    # reads bench/results/{inprocess,http}.json, writes RESULTS.md and PNGs there
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path("bench/results")


def inprocess_table(data: dict) -> list[str]:
    lines = [
        f"In-process, {data.get('precision', 'fp32')}, {data['sentences']} msra-test sentences ({data['characters']} characters), {data['threads']} thread(s), {data['cpu']}:",
        "",
        "| system | what it computes | batch | chars/s | ours ÷ it |",
        "| --- | --- | --- | --- | --- |",
    ]
    best = data["ours_best_full"]
    for figure in data["ours"].values():
        lines.append(f"| ours | {figure['tasks']} | {figure['batch_size']} | {figure['chars_per_second']:,.0f} | |")
    for name, figure in data["peers"].items():
        if "chars_per_second" in figure:
            lines.append(f"| {name} | {figure['what']} | 1 sentence per call | {figure['chars_per_second']:,.0f} | {best / figure['chars_per_second']:.2f}x |")
        else:
            lines.append(f"| {name} | | | skipped: {figure['skipped']} | |")
    lines += ["", f"Ours = best seg+pos+ner figure ({best:,.0f} chars/s). Peak RSS of the in-process run (ours only): {data['ours_peak_rss_mb']:.0f} MB."]
    if "arrival_order" in data:
        arrival = data["arrival_order"]
        lines.append(
            f"Batches as a server at {arrival['batch_size']} clients forms them ({arrival['batch_size']} consecutive sentences, lengths mixed): "
            f"{arrival['chars_per_second']:,.0f} chars/s, {arrival['ratio_to_batch_1']:.2f}x batch 1. That ratio bounds batching on ÷ off "
            f"at {arrival['batch_size']} clients before any HTTP cost."
        )
    lines.append("")
    return lines


def http_table(data: dict, inprocess: dict | None) -> list[str]:
    lines = [
        f"HTTP, `ner-serve` on localhost (int8, 1 torch thread per worker), load generator (wrk) on the same machine, {data['duration_per_point_s']:.0f} s per point:",
        "",
        "| server | sentences/request | concurrency | chars/s | sentences/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in data["runs"]:
        errors = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in run["errors"].items()) or "0"
        lines.append(
            f"| {run['server']} | {run['sentences_per_request']} | {run['concurrency']} | {run['chars_per_second']:,.0f} | {run['sentences_per_second']:,.0f} "
            f"| {run['p50_ms']:.1f} | {run['p95_ms']:.1f} | {run['p99_ms']:.1f} | {errors} |"
        )
    lines.append("")
    if "batching_ratio_c64" in data:
        lines.append(f"Batching on ÷ off at concurrency 64, one sentence per request: {data['batching_ratio_c64']:.2f}x.")
    if inprocess:
        best = inprocess["ours_best_full"]
        for run in data["runs"]:
            if run["concurrency"] == 64 and run["sentences_per_request"] == 1 and run["server"] != "batching off":
                ratio = run["chars_per_second"] / best
                lines.append(f"HTTP ({run['server']}) ÷ in-process int8 best ({best:,.0f} chars/s) at concurrency 64, one sentence per request: {ratio:.2f}x.")
    rss = "; ".join(f"{name}: " + ", ".join(f"{mb:.0f} MB" for mb in workers) for name, workers in data["server_rss_mb"].items())
    lines += [f"RSS of each server worker after the benchmark: {rss}.", ""]
    return lines


def plots(inprocess: dict | None, quantised: dict | None, http: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if inprocess:
        fig, ax = plt.subplots(figsize=(6, 4))
        for data in (inprocess, quantised):
            for tasks in ("seg+pos+ner", "seg") if data else ():
                points = [(f["batch_size"], f["chars_per_second"]) for f in data["ours"].values() if f["tasks"] == tasks]
                ax.plot(*zip(*points), marker="o", label=f"ours {data.get('precision', 'fp32')}, {tasks}")
        for name, figure in inprocess["peers"].items():
            if "chars_per_second" in figure:
                ax.axhline(figure["chars_per_second"], linestyle="--", color="grey")
                ax.annotate(name, (1, figure["chars_per_second"]), fontsize=8)
        ax.set(xscale="log", xlabel="batch size (sentences)", ylabel="characters / s", title="In-process throughput")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "throughput_vs_batch.png", dpi=90)
        plt.close(fig)
    if http:
        fig, ax = plt.subplots(figsize=(6, 4))
        for server, per_request in {(r["server"], r["sentences_per_request"]) for r in http["runs"]}:
            runs = sorted((r for r in http["runs"] if (r["server"], r["sentences_per_request"]) == (server, per_request)), key=lambda r: r["concurrency"])
            for q, style in (("p50_ms", "-"), ("p99_ms", ":")):
                ax.plot([r["concurrency"] for r in runs], [r[q] for r in runs], style, marker="o", label=f"{server}, {per_request}/req, {q[:3]}")
        ax.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title="HTTP latency percentiles")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "latency_vs_concurrency.png", dpi=90)
        plt.close(fig)


def main() -> int:
    def read(name: str) -> dict | None:
        path = RESULTS / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    inprocess, quantised, http = read("inprocess.json"), read("inprocess-int8.json"), read("http.json")
    lines = ["# Benchmark results", "", "Reproduce: `make bench` (python -m bench.throughput; python -m bench.http_load; python -m bench.report).", ""]
    for data in (inprocess, quantised):
        if data:
            lines += inprocess_table(data)
    if http:
        lines += http_table(http, quantised)
    lines += ["![throughput](throughput_vs_batch.png) ![latency](latency_vs_concurrency.png)", ""]
    (RESULTS / "RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
    plots(inprocess, quantised, http)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
