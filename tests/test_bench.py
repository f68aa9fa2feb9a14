"""The benchmark scripts run end to end on a tiny model (figures are not checked: no timing in tests)."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_throughput_and_report(tiny_bundle, tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, "-m", "bench.throughput", "--model", str(tiny_bundle), "--limit", "20", "--out", str(out / "inprocess.json")]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    report = json.loads((out / "inprocess.json").read_text())
    assert {f["batch_size"] for f in report["ours"].values()} == {1, 8, 32, 128, 512}
    assert report["peers"]["jieba.posseg.cut"]["chars_per_second"] > 0
    assert all(ratio > 0 for ratio in report["ratios"].values())
    assert report["arrival_order"]["batch_size"] == 64 and report["arrival_order"]["ratio_to_batch_1"] > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_http_load(tiny_bundle, tmp_path):
    out = tmp_path / "http.json"
    command = [sys.executable, "-m", "bench.http_load", "--model", str(tiny_bundle), "--duration", "1", "--concurrency", "2,64", "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 8  # on: 2 shapes x 2 levels; off and 2 workers: 1 shape x 2 levels
    assert all(run["requests"] > 0 and not run["errors"] for run in report["runs"])
    assert report["batching_ratio_c64"] > 0
    assert [len(workers) for workers in report["server_rss_mb"].values()] == [1, 1, 2]
