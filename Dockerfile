# syntax=docker/dockerfile:1
# The tagging service with the shipped model (model/artifacts/default, packaged in the wheel).
#
#   docker build -t zh-tagger .                                     CPU PyTorch (default)
#   docker build --build-arg TORCH_VARIANT=cu130 -t zh-tagger:cuda .  CUDA PyTorch for NVIDIA GPUs
#   docker run --read-only --tmpfs /tmp -p 8000:8000 zh-tagger
#
# TORCH_VARIANT names a folder of PyTorch's wheel index (cpu, cu126, cu128, cu130, ...);
# the CUDA wheels bring the CUDA libraries, the host needs only the NVIDIA driver and
# container toolkit. Settings are NER_* environment variables (app/settings.py).
# The root filesystem may be read-only: all writes (jieba's dictionary cache, the
# Prometheus multiprocess files) go to /tmp, which should be a tmpfs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the project's wheel, installed with its pinned dependencies into /opt/venv ----
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# torch first and alone, from PyTorch's index for the variant: from PyPI a bare torch is
# the multi-GB CUDA build. Its dependencies come from PyPI, pinned by constraints.txt.
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt \
        --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY training ./training
COPY model ./model
RUN test -f model/artifacts/default/network.pt \
        || { echo "model/artifacts/default/network.pt is missing: train the default model (make train) before building" >&2; exit 1; }
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip install --no-cache-dir -c constraints.txt /wheels/*.whl
# Fail the build, not the first start, if the installed package lacks its model
# (-I: import the installed package, not the sources in the working directory).
RUN python -I -c "from app.settings import DEFAULT_MODEL; from model.artifact import read_metadata; print(read_metadata(DEFAULT_MODEL)['version'])"

# ---- runtime: the virtual environment only, as a non-root user ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="zh-tagger" \
      org.opencontainers.image.description="Chinese word segmentation, POS tagging and NER over REST"
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ner
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
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NER_PORT', '8000'), timeout=4)"]
CMD ["ner-serve"]
