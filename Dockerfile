# The tagging service with the shipped model (model/artifacts/default, packaged in the wheel).
# Needs BuildKit (Docker 23 or later) or Podman/Buildah 1.28 or later (RUN --mount, --build-context);
# no `# syntax=` line, so that no frontend image is pulled from Docker Hub.
#
#   docker build -t zh-tagger:cpu .                                    CPU PyTorch (default)
#   docker build --build-arg TORCH_VARIANT=cu130 -t zh-tagger:cuda .   CUDA PyTorch for NVIDIA GPUs
#   docker run --read-only --tmpfs /tmp -p 8000:8000 zh-tagger:cpu
#   podman build --format docker -t zh-tagger:cpu .                    Podman/Buildah: --format docker
#                                                                      keeps the HEALTHCHECK (OCI drops it)
#
# TORCH_VARIANT names a folder of PyTorch's wheel index (cpu, cu126, cu128, cu130, ...);
# the CUDA wheels bring the CUDA libraries, the host needs only the NVIDIA driver and
# container toolkit. The build fails if the torch it installed is not that variant.
# Settings are NER_* environment variables (app/settings.py).
# The root filesystem may be read-only: all writes (jieba's dictionary cache, the
# Prometheus multiprocess files) go to /tmp, which should be a tmpfs.
#
# Behind a proxy or with an offline mirror (deploy/README.md), nothing here is edited and
# nothing of it stays in the image: build arguments PYTHON_IMAGE (a mirrored base image) and
# TORCH_INDEX_URL (a mirror of https://download.pytorch.org/whl; empty: no index, torch from
# the wheel folder), and, for pip's RUN steps only,
#   --secret id=pip_conf,src=pip.conf      a pip configuration (index-url, trusted-host, ...)
#   --secret id=ca_bundle,src=ca.crt       a CA bundle for pip (an intercepting proxy's CA)
#   --build-context wheels=DIR             a folder of wheels pip may take packages from

ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---- wheels: empty unless `--build-context wheels=DIR` replaces it (bind-mounted, never copied) ----
FROM scratch AS wheels

# ---- build: the project's wheel, installed with its pinned dependencies into /opt/venv ----
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# torch first and alone, from PyTorch's index for the variant and from no other index (from
# PyPI a bare torch is the CUDA build), then its dependencies from the package index, pinned
# by constraints.txt. The variant is checked: a CPU build must not get a CUDA torch.
COPY constraints.txt ./
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca_bundle \
    --mount=type=bind,from=wheels,target=/run/wheels \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && export PIP_FIND_LINKS=/run/wheels \
    && if [ -z "${TORCH_INDEX_URL}" ]; then export PIP_NO_INDEX=1; fi \
    && PIP_INDEX_URL="${TORCH_INDEX_URL%/}/${TORCH_VARIANT}" pip install --no-cache-dir --no-deps "torch==${TORCH_VERSION}" \
    && unset PIP_NO_INDEX \
    && pip install --no-cache-dir -c constraints.txt "torch==${TORCH_VERSION}" \
    && python -c 'import sys, torch; variant, cuda = sys.argv[1], torch.version.cuda; want = None if variant == "cpu" else variant[2:-1] + "." + variant[-1] if variant.startswith("cu") else cuda; print("torch", torch.__version__, "cuda", cuda); sys.exit(None if cuda == want else f"TORCH_VARIANT={variant} but torch {torch.__version__} has torch.version.cuda {cuda!r}")' "${TORCH_VARIANT}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY training ./training
COPY model ./model
RUN test -f model/artifacts/default/network.pt \
        || { echo "model/artifacts/default/network.pt is missing: train the default model (make train) before building" >&2; exit 1; }
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca_bundle \
    --mount=type=bind,from=wheels,target=/run/wheels \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && export PIP_FIND_LINKS=/run/wheels \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip install --no-cache-dir -c constraints.txt /wheels/*.whl
# Fail the build, not the first start, if the installed package lacks its model
# (-I: import the installed package, not the sources in the working directory).
RUN python -I -c "from app.settings import DEFAULT_MODEL; from model.artifact import read_metadata; print(read_metadata(DEFAULT_MODEL).version)"

# ---- runtime: the virtual environment only, as a non-root user ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="zh-tagger" \
      org.opencontainers.image.description="Chinese word segmentation, POS tagging and NER over REST"
# User and group ner, both 10001 (what the Kubernetes manifests run as).
RUN groupadd --system --gid 10001 ner \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ner
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    PROMETHEUS_MULTIPROC_DIR=/tmp/ner-metrics \
    NER_HOST=0.0.0.0 \
    NER_PORT=8000 \
    NER_WORKERS=1 \
    NER_DEVICE=auto \
    NER_TORCH_THREADS=1
USER 10001:10001
EXPOSE 8000
# Kept by Docker and by `podman build --format docker`; Podman's default OCI format drops it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NER_PORT', '8000'), timeout=4)"]
CMD ["ner-serve"]
