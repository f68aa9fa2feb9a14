"""A real Prometheus scrapes a real server with two workers: the dashboard's queries get data."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from bench.processes import running
from tests.conftest import free_port, run_server
from tests.test_deploy_config import (
    ALERTS,
    GPU_METRICS,
    PROMETHEUS_DIR,
    alert_queries,
    dashboard_queries,
    find_tool,
    load_dashboard,
    promql_metric_names,
)
from tests.test_metrics import TRAFFIC_ENV, send_traffic

PROMETHEUS = find_tool("prometheus")
WINDOW = "15s"  # rate window: several 1 s scrapes

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package `prometheus`; .ci/run installs it)")


class Prometheus:
    def __init__(self, url: str, log: Path):
        self.url = url
        self.log = log

    def query(self, expr: str) -> dict:
        """The JSON answer of an instant query (status, data or error)."""
        return httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()

    def values(self, expr: str) -> list[float]:
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return [float(item["value"][1]) for item in answer["data"]["result"]]


@contextmanager
def run_prometheus(tmp_path: Path, target: str) -> Iterator[Prometheus]:
    """A Prometheus server on a free localhost port scraping `target` every second with the project's alert rules; stopped at the end."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [{"job_name": "ner", "static_configs": [{"targets": [target]}]}],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    command = [
        str(PROMETHEUS),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with running(command, f"http://127.0.0.1:{port}/-/ready", log, timeout=60):
        yield Prometheus(f"http://127.0.0.1:{port}", log)


def as_instant_query(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced."""
    return expr.replace("$__rate_interval", WINDOW).replace("$instance", ".*")


def has_data(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values)


def test_prometheus_gets_request_rate_batch_sizes_and_inference_times(tiny_bundle: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "multiproc"
    metrics_dir.mkdir()
    with run_server(tiny_bundle, tmp_path, {**TRAFFIC_ENV, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, workers=2) as server:
        with run_prometheus(tmp_path, f"127.0.0.1:{server.port}") as prometheus:
            checks = {
                "request rate": f'sum(rate(ner_requests_total{{job="ner", endpoint="/tag", code="200"}}[{WINDOW}])) > 0',
                "batch size histogram": f"histogram_quantile(0.5, sum by (le) (rate(ner_batch_size_sentences_bucket[{WINDOW}]))) > 0",
                "inference time histogram": f"histogram_quantile(0.99, sum by (le) (rate(ner_inference_seconds_bucket[{WINDOW}]))) > 0",
            }
            # Every panel gets data except the GPU ones (no exporter here) and entities (the tiny model finds none).
            panels = [
                as_instant_query(expr)
                for expr in dashboard_queries(load_dashboard())
                if not promql_metric_names(expr) & (GPU_METRICS | {"ner_entities_total"})
            ]
            deadline = time.monotonic() + 60
            while True:
                send_traffic(server)
                missing = [name for name, expr in checks.items() if not has_data(prometheus.values(expr))]
                missing += [expr for expr in panels if not has_data(prometheus.values(expr))]
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert not missing, f"no data after 60 s of traffic for: {missing}\n{prometheus.log.read_text()[-2000:]}"

            # Both workers are counted: the process metrics have two pids.
            assert prometheus.values('count(process_start_time_seconds{job="ner"})') == [2]
            targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            assert [target["health"] for target in targets] == ["up"]

            # The project's rules load and evaluate on the live data. The fault-injected 500s are
            # 1 in 8 requests of each round: NerHighErrorRatio is pending (it fires after 5 min).
            # NerHighLatencyP99 is left out: its state depends on the machine's speed.
            for expr in alert_queries():
                assert prometheus.query(expr)["status"] == "success", expr
            expected_states = {name: "inactive" for name in ALERTS} | {"NerHighErrorRatio": "pending"}
            del expected_states["NerHighLatencyP99"]
            deadline = time.monotonic() + 30
            while True:
                groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
                rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
                states = {name: rules[name]["state"] for name in expected_states if name in rules}
                if states == expected_states or time.monotonic() > deadline:
                    break
                send_traffic(server)
                time.sleep(0.5)
            assert set(rules) == ALERTS
            assert all(rule["health"] == "ok" for rule in rules.values()), rules
            assert states == expected_states
