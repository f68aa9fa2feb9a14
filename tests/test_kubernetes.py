"""The Kubernetes manifests (deploy/kubernetes): valid against the API schemas (kubernetes-validate,
strict, offline), and consistent with the service: probes, port, user, drain, metric names."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from app.metrics import METRIC_NAMES
from app.settings import Settings
from tests.conftest import ROOT
from tests.test_deploy_config import find_tool, promql_metric_names

KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(path for path in KUBERNETES_DIR.rglob("*.yaml") if path.name != "kustomization.yaml")
DEPLOYMENTS = [KUBERNETES_DIR / "deployment.yaml", KUBERNETES_DIR / "gpu" / "deployment.yaml"]


def load(path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: str(path.relative_to(KUBERNETES_DIR)))
def test_manifest_is_valid_in_strict_mode(manifest):
    tool = find_tool("kubernetes-validate")
    assert tool, "kubernetes-validate is missing (the dev extra installs it)"
    run = subprocess.run([tool, "--strict", str(manifest)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_kustomizations_list_every_manifest_beside_them():
    for kustomization in KUBERNETES_DIR.rglob("kustomization.yaml"):
        listed = set(load(kustomization)["resources"])
        present = {path.name for path in kustomization.parent.glob("*.yaml") if path.name != "kustomization.yaml"}
        assert listed == present, kustomization


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=["cpu", "gpu"])
def test_deployment_matches_the_service(path):
    deployment = load(path)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    port = int(env["NER_PORT"])
    assert env["NER_HOST"] == "0.0.0.0"
    # CPU pods scale by replicas, one worker each; a GPU pod's workers share its one GPU.
    workers = int(env["NER_WORKERS"])
    if path == DEPLOYMENTS[0]:
        assert workers == 1
    else:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert int(container["resources"]["requests"]["cpu"]) >= workers, "a core per worker"
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    # non-root as the image's user, read-only root, /tmp the only writable path
    dockerfile_user = re.search(r"^USER (\d+):(\d+)", (ROOT / "Dockerfile").read_text(), re.M).groups()
    assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == dockerfile_user
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    # the drain fits: preStop, then queued sentences may wait up to the request timeout
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + Settings().request_timeout_s
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    # the Service selects these pods and targets the port by name
    service = load(KUBERNETES_DIR / "service.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_autoscaler_metrics_come_from_the_exporter():
    hpa = load(KUBERNETES_DIR / "hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == load(KUBERNETES_DIR / "deployment.yaml")["metadata"]["name"]
    pod_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    adapter = yaml.safe_load(load(KUBERNETES_DIR / "prometheus-adapter-config.yaml")["data"]["config.yaml"])
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]}
    assert pod_metrics == {"ner_queue_utilisation"} and pod_metrics <= served.keys()
    for rule in adapter["rules"]:
        queries = [rule["seriesQuery"], re.sub(r"<<[^>]*>>", "x", rule["metricsQuery"])]
        names = set().union(*(promql_metric_names(query) for query in queries))
        assert names and names <= set(METRIC_NAMES), names
    # depth over capacity, per pod
    rule = served["ner_queue_utilisation"]
    assert "ner_queue_depth" in rule["metricsQuery"].split("/")[0] and "ner_queue_capacity" in rule["metricsQuery"].split("/")[1]
