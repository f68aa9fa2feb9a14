"""The benchmark scripts run end to end on a tiny model (figures are not checked: no timing in tests)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from bench.report import stages_table
from tests.conftest import ROOT


def test_throughput_and_report(tiny_bundle, tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, "-m", "bench.throughput", "--model", str(tiny_bundle), "--limit", "20", "--baseline", str(tiny_bundle), "--out", str(out / "inprocess.json")]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    report = json.loads((out / "inprocess.json").read_text())
    assert {f["batch_size"] for f in report["ours"].values()} == {1, 8, 32, 128, 512}
    assert report["peers"]["jieba.posseg.cut"]["chars_per_second"] > 0
    assert all(ratio > 0 for ratio in report["ratios"].values())
    # --baseline: the other bundle timed at the same batch sizes, and ours ÷ its best
    assert {f["batch_size"] for f in report["baseline"].values()} == {1, 8, 32, 128, 512}
    assert report["ratios"]["baseline"] > 0
    assert report["arrival_order"]["batch_size"] == 64 and report["arrival_order"]["ratio_to_batch_1"] > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_http_load(tiny_bundle, tmp_path):
    out = tmp_path / "http.json"
    command = [sys.executable, "-m", "bench.http_load", "--model", str(tiny_bundle), "--duration", "1", "--concurrency", "2,64", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 8  # on: 2 shapes x 2 levels; off and 2 workers: 1 shape x 2 levels
    assert all(run["requests"] > 0 and not run["errors"] for run in report["runs"])
    # batching on, each request shape again at half of its peak request rate
    assert [point["sentences_per_request"] for point in report["half_peak"]] == [1, 32]
    for point in report["half_peak"]:
        assert point["requests"] > 0 and not point["errors"]
        assert point["target_requests_per_second"] * 2 == pytest.approx(point["peak_requests_per_second"])
    assert report["batching_ratio_c64"] > 0
    assert [len(workers) for workers in report["server_rss_mb"].values()] == [1, 1, 2]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_stages_and_the_bare_framework_reference(tiny_bundle, tmp_path):
    out = tmp_path / "stages.json"
    command = [sys.executable, "-m", "bench.stages", "--model", str(tiny_bundle), "--limit", "50", "--rounds", "1", "--http", "--duration", "1", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert set(report["best_seconds"]) == {"prepare", "featurise", "network", "decode", "assemble"}
    assert report["all_but_network_chars_per_s"] > 0
    http = report["http"]
    assert set(http["rounds"]) == {"bare", "ner-serve"} and all(len(points) == 2 for points in http["rounds"].values())
    assert all(point["requests"] > 0 and not point["errors"] for points in http["rounds"].values() for point in points)
    assert http["ner_serve_over_bare"] > 0 and http["answer_bytes"] > 100
    # where one worker's CPU went: its event loop, its inference thread, and wrk
    for point in http["rounds"]["ner-serve"]:
        assert set(point["cpu_seconds"]) == {"event loop", "other threads", "load generator"}
        assert all(seconds > 0 for seconds in point["cpu_seconds"].values()), point["cpu_seconds"]
        assert point["mean_batch_sentences"] >= 1 and point["inference_seconds"] > 0
    assert "the worker's event loop used" in "\n".join(stages_table(report))


def test_gpu_script_and_report_on_the_cpu(tiny_bundle, tmp_path):
    """bench/gpu.sh's accuracy (two of its four corpora), in-process and stage steps (one HTTP
    point per server), tried out on the CPU on a few sentences, then the GPU section of the
    report built from what they wrote."""
    results = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable, "MODEL": str(tiny_bundle), "RESULTS": str(results / "gpu"), "DEVICE": "cpu", "STEPS": "eval inprocess stages viterbi", "CORPORA": "msra-test pd98-test", "HTTP_ROUNDS": "1", "SAMPLE": "20", "LIMIT": "20", "DURATION": "1"}
    subprocess.run(["bash", "bench/gpu.sh"], cwd=ROOT, env=env, check=True, capture_output=True)
    fp16 = json.loads((results / "gpu" / "inprocess-fp16.json").read_text())
    assert fp16["precision"] == "fp16" and {f["batch_size"] for f in fp16["ours"].values()} == {32, 128, 512, 2048}
    decoders = json.loads((results / "gpu" / "viterbi.json").read_text())
    assert decoders["sentences_with_different_answers"] == 0 and len(decoders["chars_per_second"]) == 2
    subprocess.run([sys.executable, "-m", "bench.report", "--results", str(results)], cwd=ROOT, check=True, capture_output=True)
    markdown = (results / "RESULTS.md").read_text(encoding="utf-8")
    assert "## GPU" in markdown and "| loop on every device |" in markdown
    assert markdown.count("### Where the time goes (") == 2 and "`ner-serve` (one worker, int8)" in markdown  # fp32 with HTTP, fp16
    assert sum(line.startswith(("| fp32 | 0.", "| fp16 | 0.")) for line in markdown.splitlines()) == 2  # the accuracy rows
    assert (results / "gpu_throughput_vs_batch.png").stat().st_size > 0


def test_the_rnn_variants_loop_is_the_lstm_it_is_timed_against():
    """bench.rnn_variants times a loop over time against torch's LSTM: its figures mean
    something only if the loop computes the same outputs from the same weights."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    from bench.rnn_variants import recurrence, reversed_within

    torch.manual_seed(0)
    hidden, inputs = 6, 5
    lstm = torch.nn.LSTM(inputs, hidden, bidirectional=True, batch_first=True).eval()
    lengths = torch.tensor([4, 1, 7, 3])
    packed = pack_padded_sequence(torch.randn(4, 7, inputs), lengths, batch_first=True, enforce_sorted=False)
    order = torch.cat([torch.arange(hidden) + g * hidden for g in (0, 1, 3, 2)])  # torch's i, f, g, o as i, f, o, g
    weight_ih = torch.cat([lstm.weight_ih_l0[order], lstm.weight_ih_l0_reverse[order]])
    bias = torch.cat([(lstm.bias_ih_l0 + lstm.bias_hh_l0)[order], (lstm.bias_ih_l0_reverse + lstm.bias_hh_l0_reverse)[order]])
    weight_hh = torch.stack([lstm.weight_hh_l0[order].t(), lstm.weight_hh_l0_reverse[order].t()])
    reverse = reversed_within(packed)
    projected = torch.addmm(bias, packed.data, weight_ih.t()).view(-1, 2, 4 * hidden)
    with torch.no_grad():
        looped = recurrence(torch.stack([projected[:, 0], projected[reverse, 1]], 1), packed.batch_sizes.tolist(), weight_hh, hidden, True)
        expected = lstm(packed)[0].data.view(-1, 2, hidden)
    assert torch.allclose(looped[:, 0], expected[:, 0], atol=1e-6)
    assert torch.allclose(looped[reverse, 1], expected[:, 1], atol=1e-6)
