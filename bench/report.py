"""Turn the benchmark JSON files into Markdown tables and plots.

    python -m bench.report [--results bench/results]
                              # reads inprocess*.json and http.json there (and gpu/*.json from
                              # bench/gpu.sh, if any), writes RESULTS.md and PNGs there
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path("bench/results")


def machine(data: dict) -> str:
    device = data.get("device", "cpu")
    return data["cpu"] if device == "cpu" else f"{device} (peers on one core of the {data['cpu']} CPU)"


def format_errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in errors.items()) or "0"


def inprocess_table(data: dict) -> list[str]:
    lines = [
        f"In-process, {data.get('precision', 'fp32')}, {data['sentences']} msra-test sentences ({data['characters']} characters), {data['threads']} thread(s), {machine(data)}:",
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
    if "ours_peak_gpu_memory_mb" in data:
        lines.append(f"Peak GPU memory allocated by torch: {data['ours_peak_gpu_memory_mb']:.0f} MB.")
    if data.get("arrival_order", {}).get("ratio_to_batch_1"):
        arrival = data["arrival_order"]
        lines.append(
            f"Batches as a server at {arrival['batch_size']} clients forms them ({arrival['batch_size']} consecutive sentences, lengths mixed): "
            f"{arrival['chars_per_second']:,.0f} chars/s, {arrival['ratio_to_batch_1']:.2f}x batch 1. That ratio bounds batching on ÷ off "
            f"at {arrival['batch_size']} clients before any HTTP cost."
        )
    lines.append("")
    return lines


def http_table(data: dict, inprocess: dict | None) -> list[str]:
    settings = ", ".join(f"{k}={v}" for k, v in data.get("server_env", {}).items() if k not in ("NER_DEVICE", "NER_PRECISION"))
    where = f"device {data.get('device', 'auto')}, {data.get('precision', 'int8')}" + (f", {settings}" if settings else "")
    lines = [
        f"HTTP, `ner-serve` on localhost ({where}; 1 torch thread per worker), load generator (wrk) on the same machine, {data['duration_per_point_s']:.0f} s per point:",
        "",
        "| server | sentences/request | concurrency | chars/s | sentences/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in data["runs"]:
        lines.append(
            f"| {run['server']} | {run['sentences_per_request']} | {run['concurrency']} | {run['chars_per_second']:,.0f} | {run['sentences_per_second']:,.0f} "
            f"| {run['p50_ms']:.1f} | {run['p95_ms']:.1f} | {run['p99_ms']:.1f} | {format_errors(run['errors'])} |"
        )
    for point in data.get("half_peak", []):
        lines.append(
            f"| {point['server']}, at half of peak ({point['requests_per_second']:,.0f} of {point['peak_requests_per_second']:,.0f} requests/s) | {point['sentences_per_request']} | "
            f"{point['concurrency']} paced | {point['chars_per_second']:,.0f} | {point['sentences_per_second']:,.0f} | {point['p50_ms']:.1f} | {point['p95_ms']:.1f} | {point['p99_ms']:.1f} | {format_errors(point['errors'])} |"
        )
    lines.append("")
    if "note" in data:
        lines.append(f"Note: {data['note']}")
    if "batching_ratio_c64" in data:
        lines.append(f"Batching on ÷ off at concurrency 64, one sentence per request: {data['batching_ratio_c64']:.2f}x.")
    if inprocess:
        best = inprocess["ours_best_full"]
        for run in data["runs"]:
            if run["concurrency"] == 64 and run["sentences_per_request"] == 1 and run["server"] != "batching off":
                ratio = run["chars_per_second"] / best
                lines.append(f"HTTP ({run['server']}) ÷ in-process {inprocess['precision']} best ({best:,.0f} chars/s) at concurrency 64, one sentence per request: {ratio:.2f}x.")
    if "server_peak_rss_mb" in data:
        lines += [
            f"RSS of each server worker after the benchmark (queue drained, then idle for a few seconds): {_per_worker_mb(data['server_rss_mb'])}.",
            f"Largest RSS of each server worker while under load (sampled every 0.1 s): {_per_worker_mb(data['server_peak_rss_mb'])}.",
        ]
    else:  # runs before 2026-11-27 read it right after the last load point and sampled nothing
        lines += [f"RSS of each server worker right after the last load point: {_per_worker_mb(data['server_rss_mb'])}."]
    lines += [""]
    return lines


def _per_worker_mb(servers: dict[str, list[float]]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{mb:.0f} MB" for mb in workers) for name, workers in servers.items())


def plots(folder: Path, inprocess: list[dict], http: list[dict], prefix: str = "", title: str = "") -> None:
    """throughput_vs_batch.png from in-process reports, latency_vs_concurrency.png from HTTP ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if inprocess:
        fig, ax = plt.subplots(figsize=(6, 4))
        for data in inprocess:
            for tasks in ("seg+pos+ner", "seg"):
                points = [(f["batch_size"], f["chars_per_second"]) for f in data["ours"].values() if f["tasks"] == tasks]
                ax.plot(*zip(*points), marker="o", label=f"ours {data.get('precision', 'fp32')}, {tasks}")
        for name, figure in inprocess[0]["peers"].items():
            if "chars_per_second" in figure:
                ax.axhline(figure["chars_per_second"], linestyle="--", color="grey")
                ax.annotate(name, (1, figure["chars_per_second"]), fontsize=8)
        ax.set(xscale="log", xlabel="batch size (sentences)", ylabel="characters / s", title=f"In-process throughput{title}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"{prefix}throughput_vs_batch.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    if http:
        fig, ax = plt.subplots(figsize=(6, 4) if len(http) == 1 else (9, 5))
        for data in http:
            large = ", large batches" if "NER_MAX_BATCH_SENTENCES" in data.get("server_env", {}) else ""
            label = "" if len(http) == 1 else f"{data['precision']}{large}, "
            for server, per_request in sorted({(r["server"], r["sentences_per_request"]) for r in data["runs"]}):
                runs = sorted((r for r in data["runs"] if (r["server"], r["sentences_per_request"]) == (server, per_request)), key=lambda r: r["concurrency"])
                for q, style in (("p50_ms", "-"), ("p99_ms", ":")):
                    ax.plot([r["concurrency"] for r in runs], [r[q] for r in runs], style, marker="o", label=f"{label}{server}, {per_request}/req, {q[:3]}")
        ax.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)", title=f"HTTP latency percentiles{title}")
        outside = {"fontsize": 6, "loc": "upper left", "bbox_to_anchor": (1.01, 1)}  # many series: the legend beside the plot
        ax.legend(**(outside if len(http) > 1 else {"fontsize": 7}))
        fig.tight_layout()
        fig.savefig(folder / f"{prefix}latency_vs_concurrency.png", dpi=90, bbox_inches="tight")
        plt.close(fig)


def read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def accuracy_table(folder: Path) -> list[str]:
    """Test-split F1 of each precision that bench/gpu.sh evaluated (NER on every test corpus it found)."""
    ner_corpora = [corpus for corpus in ("msra-test", "cluener-test", "resume-test") if (folder / f"eval-{corpus}-fp32.json").is_file()]
    lines = [
        "| precision | " + " | ".join(f"NER F1 ({corpus})" for corpus in ner_corpora) + " | seg F1 (pd98-test) | OOV recall | POS F1 (pd98-test) |",
        "| --- |" + " --- |" * (len(ner_corpora) + 3),
    ]
    for precision in ("fp32", "fp16"):
        ner = [read(folder / f"eval-{corpus}-{precision}.json") for corpus in ner_corpora]
        words = read(folder / f"eval-pd98-test-{precision}.json")
        if ner and all(ner) and words:
            seg, pos = words["model"]["seg"], words["model"]["pos"]
            entities = " | ".join(f"{data['model']['ner']['f1']:.4f}" for data in ner)
            lines.append(f"| {precision} | {entities} | {seg['f1']:.4f} | {seg['oov_recall']:.4f} | {pos['f1']:.4f} |")
    return lines + [""] if len(lines) > 2 else []


def same_answer_lines(folder: Path) -> list[str]:
    """bench.same_answer on the GPU: answers under 64-client load that differ from the same text alone."""
    lines = []
    for precision in ("fp32", "fp16"):
        if data := read(folder / f"same-answer-{precision}.json"):
            lines.append(
                f"- {precision}: {data['differing']} of {data['answers']} answers under {data['clients']}-client load differ from the same text alone "
                f"(`python -m bench.same_answer --rounds {len(data['rounds'])}` with {', '.join(f'{k}={v}' for k, v in data['server_env'].items())})."
            )
    return ["The same text, the same answer, on the GPU:", "", *lines, ""] if lines else []


def viterbi_table(folder: Path) -> list[str]:
    """bench.viterbi: the whole tagger with each Viterbi decoder, chars/s by batch size."""
    data = read(folder / "viterbi.json")
    if not data:
        return []
    rates = data["chars_per_second"]
    sizes = list(next(iter(rates.values())))
    lines = [
        f"Viterbi decoders in the whole tagger (seg+pos+ner, {data['precision']}, {data['sentences']} msra-test sentences, {data['device']}; `python -m bench.viterbi`), chars/s:",
        "",
        "| decoder | " + " | ".join(f"batch {size}" for size in sizes) + " |",
        "| --- |" + " --- |" * len(sizes),
    ]
    lines += [f"| {name} | " + " | ".join(f"{by_size[size]:,.0f}" for size in sizes) + " |" for name, by_size in rates.items()]
    return lines + ["", f"Sentences whose answers differ between the decoders: {data['sentences_with_different_answers']}.", ""]


def gpu_section(results: Path) -> list[str]:
    """The figures of bench/gpu.sh, if it was run (results in RESULTS/gpu); plots beside them."""
    folder = results / "gpu"
    inprocess = [data for name in ("inprocess-fp32.json", "inprocess-fp16.json") if (data := read(folder / name))]
    # the server defaults first, then larger batches in fp32, then in fp16, then several workers
    http = sorted(
        (read(path) for path in folder.glob("http-*.json")),
        key=lambda data: (len(data.get("server_env", {})), data.get("workers", 1) > 1, data["precision"] == "fp16"),
    )
    if not inprocess and not http:
        return []
    card = (folder / "card.txt").read_text(encoding="utf-8").strip().replace("\n", "; ") if (folder / "card.txt").is_file() else "unknown"
    lines = ["## GPU", "", f"Card: {card}. Reproduce: `make bench-gpu` (bench/gpu.sh) on a machine with a CUDA build of torch and wrk, then `python -m bench.report`.", ""]
    lines += accuracy_table(folder)
    for data in inprocess:
        lines += inprocess_table(data)
    for precision in ("fp32", "fp16"):
        if stages := read(folder / f"stages-{precision}.json"):
            lines += stages_table(stages, level="###")
    lines += viterbi_table(folder)
    lines += same_answer_lines(folder)
    for data in http:
        lines += http_table(data, next((i for i in inprocess if i["precision"] == data["precision"]), None))
    lines += ["![GPU throughput](gpu_throughput_vs_batch.png) ![GPU latency](gpu_latency_vs_concurrency.png)", ""]
    plots(results, inprocess, http, "gpu_", " (GPU)")
    return lines


def stages_table(data: dict, level: str = "##") -> list[str]:
    """bench/stages.py: seconds per stage of the in-process pipeline, and HTTP against the bare framework."""
    characters = data["characters"]
    device = data.get("device", "cpu")
    on = "" if device == "cpu" else f" on {device}, the other stages on one CPU thread"
    lines = [
        f"{level} Where the time goes ({data['precision']}{on}, batches of {data['batch_size']}, {data['measured_at']}; python -m bench.stages{' --http' if 'http' in data else ''})",
        "",
        "| stage | seconds | chars/s |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {stage} | {seconds:.3f} | {characters / seconds:,.0f} |" for stage, seconds in data["best_seconds"].items()]
    lines += [f"| everything but the network | {sum(s for k, s in data['best_seconds'].items() if k != 'network'):.3f} | {data['all_but_network_chars_per_s']:,.0f} |", ""]
    if http := data.get("http"):
        best = http["best_requests_per_second"]
        lines += [
            f"HTTP, one sentence per request, 64 connections: `ner-serve` (one worker, {'int8' if device == 'cpu' else 'fp32 on ' + device}) {best['ner-serve']:,.0f} requests/s, a bare FastAPI "
            f"endpoint returning a fixed answer of the same size ({http['answer_bytes']} bytes) {best['bare']:,.0f}: **{http['ner_serve_over_bare']:.2f}x** (best of two interleaved rounds each).",
            "",
        ]
        top = max(http["rounds"]["ner-serve"], key=lambda point: point["requests_per_second"])
        if "cpu_seconds" in top:  # results written before bench.stages measured it have none
            cpu = top["cpu_seconds"]
            lines += [
                f"In that `ner-serve` round ({top['seconds']:.1f} s on {data['cores']} cores): the worker's event loop used {cpu['event loop']:.1f} CPU seconds, its other threads "
                f"(inference) {cpu['other threads']:.1f}, the load generator {cpu['load generator']:.1f}; batches held {top['mean_batch_sentences']:.1f} sentences on average.",
                "",
            ]
    return lines


def bulk_table(data: dict) -> list[str]:
    """bench/bulk.py: ner-bulk on a two-node local Ray cluster beside in-process Tagger.tag."""
    one, two = data["ner_bulk"]["1"], data["ner_bulk"]["2"]
    return [
        f"## ner-bulk on Ray ({data['cores']} cores, {data['characters']:,} characters; {data['measured_at']}; python -m bench.bulk)",
        "",
        "| | wall chars/s | steady chars/s |",
        "| --- | --- | --- |",
        f"| in-process Tagger.tag, int8, 1 thread | | {data['in_process_chars_per_s']:,} |",
        f"| ner-bulk, 1 actor | {one['chars_per_s']:,} | {one['steady_chars_per_s']:,} |",
        f"| ner-bulk, 2 actors | {two['chars_per_s']:,} | {two['steady_chars_per_s']:,} |",
        f"| 2 actors ÷ 1 | {data['two_over_one_actor']['wall']:.2f}x | {data['two_over_one_actor']['steady']:.2f}x |",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    results = parser.parse_args(argv).results
    inprocess, quantised, http = read(results / "inprocess.json"), read(results / "inprocess-int8.json"), read(results / "http.json")
    lines = ["# Benchmark results", "", "Reproduce: `make bench` (python -m bench.throughput; python -m bench.http_load; python -m bench.report).", ""]
    for data in (inprocess, quantised):
        if data:
            lines += inprocess_table(data)
    if http:
        lines += http_table(http, quantised)
    lines += ["![throughput](throughput_vs_batch.png) ![latency](latency_vs_concurrency.png)", ""]
    plots(results, [data for data in (inprocess, quantised) if data], [http] if http else [])
    if stages := read(results / "stages.json"):
        lines += stages_table(stages)
    if bulk := read(results / "bulk.json"):
        lines += bulk_table(bulk)
    lines += gpu_section(results)
    (results / "RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
