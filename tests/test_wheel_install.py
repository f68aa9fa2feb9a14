"""What the Docker image does, without Docker: build the wheel from the files the Dockerfile
copies, install it into a fresh virtualenv (torch first, then the wheel with the pinned
constraints), run `ner-serve` from outside the source tree with the packaged default model
and tag a text. Slow (a fresh torch install): one test."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from bench.processes import running
from tests.conftest import ROOT, free_port
from tests.test_metrics import parse, value

# What the Dockerfile's build stage copies into the build context.
SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "app", "model", "training")
BUNDLE_FILES = ("network.pt", "metadata.json")
TEXT = "江泽民在北京大学发表讲话。"


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 480) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Python at the source tree or this virtualenv."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR") and not k.startswith("NER_")}
    return {**environment, **extra}


# CI's container check (make image-test, after make test) builds this wheel in the image's build
# stage, installs it with the same constraints and serves the packaged model from it, read-only:
# .ci/run sets this so that the same install is not also done here (about 100 s of CI).
IMAGE_TEST_FOLLOWS = os.environ.get("NER_IMAGE_TEST_FOLLOWS") == "1"


@pytest.mark.skipif(IMAGE_TEST_FOLLOWS, reason="the container check that follows (make image-test) installs and serves the same wheel")
def test_installed_wheel_serves_the_packaged_default_model(tmp_path: Path) -> None:
    bundle = ROOT / "model" / "artifacts" / "default"
    missing = [name for name in BUNDLE_FILES if not (bundle / name).is_file()]
    if missing:
        pytest.fail(f"the shipped model bundle {bundle} lacks {missing}: the wheel and the image would have no model. Train it first (make train).")
    metadata = json.loads((bundle / "metadata.json").read_text(encoding="utf-8"))

    # The build context, as the Dockerfile copies it.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, source / name)
    dist = tmp_path / "dist"
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]  # offline-friendly when possible
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "--wheel-dir", str(dist), str(source)], cwd=tmp_path)
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
    for name in BUNDLE_FILES:
        assert f"model/artifacts/default/{name}" in packaged, f"the wheel lacks the bundle's {name}"

    # A fresh virtualenv: torch alone first (pinned as in the Makefile and the Dockerfile), then the wheel.
    torch_version = re.search(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text()).group(1)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = str(venv / "bin" / "python")
    environment = clean_environment()
    run([python, "-m", "pip", "install", "-q", f"torch=={torch_version}"], cwd=tmp_path, env=environment)
    run([python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)], cwd=tmp_path, env=environment)

    # Away from the source tree, the installed packages are the ones imported.
    workdir = tmp_path / "run"
    workdir.mkdir()
    where = run([python, "-c", "import app, model; print(app.__file__); print(model.__file__)"], cwd=workdir, env=environment)
    for line in where.split():
        assert Path(line).is_relative_to(venv) and not Path(line).is_relative_to(ROOT), where

    # The image's settings (Dockerfile ENV), with its temp files in a temp dir of the test
    # and, as for the image's user, a home folder that does not exist.
    temp = tmp_path / "tmp"
    temp.mkdir()
    home = tmp_path / "nonexistent-home"
    port = free_port()
    server_environment = clean_environment(
        HOME=str(home),
        TMPDIR=str(temp),
        PROMETHEUS_MULTIPROC_DIR=str(temp / "ner-metrics"),
        NER_HOST="127.0.0.1",
        NER_PORT=str(port),
        NER_WORKERS="1",
        NER_DEVICE="auto",
        NER_TORCH_THREADS="1",
    )
    log = tmp_path / "ner-serve.log"
    url = f"http://127.0.0.1:{port}"
    with running([str(venv / "bin" / "ner-serve")], f"{url}/readyz", log, server_environment, workdir, timeout=180):
        answer = httpx.post(f"{url}/tag", json={"text": TEXT}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == {"name": metadata["name"], "version": metadata["version"]}
        [result] = body["results"]
        assert "".join(token["text"] for token in result["tokens"]) == TEXT
        assert all(TEXT[token["start"] : token["end"]] == token["text"] for token in result["tokens"])
        assert all(TEXT[entity["start"] : entity["end"]] == entity["text"] for entity in result["entities"])

        samples = parse(httpx.get(f"{url}/metrics", timeout=10).text)
        assert value(samples, "ner_requests_total", endpoint="/tag", code="200") == 1
        assert value(samples, "ner_characters_total") == len(TEXT)
        assert value(samples, "ner_model_info", name=metadata["name"], version=metadata["version"], device="cpu-int8") == 1
        # A read-only root filesystem would do: nothing written outside the temp dir.
        assert list(workdir.iterdir()) == [], "the server wrote into its working directory"
        assert not home.exists(), "the server wrote into its home folder"
