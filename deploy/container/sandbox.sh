# shellcheck shell=bash
# ---------------------------------------------------------------------------------------------
#  SANDBOX SETTINGS: the one place for what the container check needs on this project's CI
#  machines (Debian 12, Podman 4.3 / Buildah 1.28 from Debian, no Docker engine, no Docker Hub,
#  PyPI through an egress proxy with its own CA, download.pytorch.org unreachable).
#  An ordinary host with Docker, or with Podman and a registry, needs none of this.
# ---------------------------------------------------------------------------------------------
# Sourced by image_test.sh when CONTAINER_SANDBOX=1, or when CONTAINER_SANDBOX is unset (auto)
# and the engine is Podman and Docker Hub does not answer. CONTAINER_SANDBOX=0 turns it off.
#
#   * hard RLIMIT_NOFILE is 20000 and CAP_SYS_RESOURCE is missing, so Podman's default ulimits
#     (nofile 1048576) make every container start fail: default_ulimits are lowered;
#   * cgroup v1 with a cgroup2 hierarchy that has a controller (hybrid): crun 1.8 refuses it,
#     runc works; no systemd: cgroupfs and the file events logger (HEALTHCHECK timers cannot be
#     created, `podman healthcheck run` works by hand);
#   * no Docker Hub: docker.io is blocked in registries.conf (fail fast, never half-pull), the
#     Python base image is made with debootstrap from the Debian mirror apt uses and
#     `podman import`ed as localhost/local/python:3.11-bookworm (Debian's python3.11: no
#     /usr/local/bin/python, `python` from python-is-python3), and Prometheus is Debian's
#     `prometheus` package in an image built on that base (Grafana has no Debian package: it
#     is not run here);
#   * pip in the build must trust the egress proxy's CA and take the CPU torch wheel from the
#     local find-links folder of the host's pip configuration: both are passed as a build
#     secret and a build context (never in the image), and no PyTorch index is used.
#
# Both base images are kept in Podman's storage and reused by the next run (a fresh machine
# makes them: debootstrap took 95 s to 2 min 48 s here).

SANDBOX_STATE=${SANDBOX_STATE:-/var/tmp/zh-tagger-container-sandbox}
SANDBOX_PYTHON_IMAGE=localhost/local/python:3.11-bookworm
SANDBOX_PROMETHEUS_IMAGE=localhost/local/prometheus:bookworm

# Podman's engine settings for this machine; exported, so every podman/buildah call of the
# script (and podman-compose's) uses them. The machine's own /etc/containers is not touched.
sandbox_engine_config() {
    mkdir -p "$SANDBOX_STATE"
    cat > "$SANDBOX_STATE/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    cat > "$SANDBOX_STATE/registries.conf" <<'CONF'
unqualified-search-registries = []
short-name-mode = "permissive"
[[registry]]
location = "docker.io"
blocked = true
[[registry]]
location = "nvcr.io"
blocked = true
CONF
    export CONTAINERS_CONF=$SANDBOX_STATE/containers.conf
    export CONTAINERS_REGISTRIES_CONF=$SANDBOX_STATE/registries.conf
}

# The Debian mirror apt uses on this host (deb822 or one-line sources).
sandbox_mirror() {
    local mirror
    mirror=$(grep -hoE '^URIs: +[a-z]+://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +[a-z]+://[^ ]+/debian/? ' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
    echo "${mirror%/}"
}

# Debian bookworm with python3.11 and venv, imported as an image (the stand-in for
# docker.io/library/python:3.11-slim-bookworm).
sandbox_python_image() {
    if podman image exists "$SANDBOX_PYTHON_IMAGE"; then
        echo "base image $SANDBOX_PYTHON_IMAGE: cached"
        return
    fi
    command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; return 1; }
    local mirror rootfs
    mirror=${MIRROR:-$(sandbox_mirror)}
    [ -n "$mirror" ] || { echo "set MIRROR to a Debian mirror URL" >&2; return 1; }
    rootfs=$SANDBOX_STATE/rootfs
    rm -rf "$rootfs"
    echo "debootstrap bookworm from $mirror (log: $SANDBOX_STATE/debootstrap.log)"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$SANDBOX_STATE/debootstrap.log" 2>&1 \
        || { tail -20 "$SANDBOX_STATE/debootstrap.log" >&2; return 1; }
    cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
    mount --bind /proc "$rootfs/proc"
    chroot "$rootfs" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin' \
        >>"$SANDBOX_STATE/debootstrap.log" 2>&1 || { umount "$rootfs/proc"; tail -20 "$SANDBOX_STATE/debootstrap.log" >&2; return 1; }
    umount "$rootfs/proc"
    tar -C "$rootfs" -c . | podman import --quiet \
        --change 'ENV=LANG=C.UTF-8' \
        --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD=["python3"]' - "$SANDBOX_PYTHON_IMAGE" >/dev/null
    rm -rf "$rootfs"
    echo "base image $SANDBOX_PYTHON_IMAGE: made"
}

# Prometheus from Debian's package (2.42), on the same base: the compose file takes its image
# from PROMETHEUS_IMAGE.
sandbox_prometheus_image() {
    if podman image exists "$SANDBOX_PROMETHEUS_IMAGE"; then
        echo "Prometheus image $SANDBOX_PROMETHEUS_IMAGE: cached"
    else
        echo "Prometheus image $SANDBOX_PROMETHEUS_IMAGE: building from Debian's prometheus package"
        mkdir -p "$SANDBOX_STATE/prometheus"
        cat > "$SANDBOX_STATE/prometheus/Containerfile" <<'CONTAINERFILE'
ARG BASE=localhost/local/python:3.11-bookworm
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
CONTAINERFILE
        podman build --format docker --build-arg BASE="$SANDBOX_PYTHON_IMAGE" \
            -t "$SANDBOX_PROMETHEUS_IMAGE" "$SANDBOX_STATE/prometheus" >"$SANDBOX_STATE/prometheus-build.log" 2>&1 \
            || { tail -20 "$SANDBOX_STATE/prometheus-build.log" >&2; return 1; }
    fi
    export PROMETHEUS_IMAGE=$SANDBOX_PROMETHEUS_IMAGE
}

# What the build of the project's Dockerfile gets here: the local base image, no PyTorch index
# (torch from the wheel folder only), the host's CA bundle and pip find-links folder.
sandbox_build_inputs() {
    local pip_cmd=(python3 -m pip)
    export PYTHON_IMAGE=$SANDBOX_PYTHON_IMAGE
    export TORCH_INDEX_URL=
    : "${BUILD_CA_BUNDLE:=${PIP_CERT:-$("${pip_cmd[@]}" config get global.cert 2>/dev/null || true)}}"
    : "${BUILD_WHEELS_DIR:=${PIP_FIND_LINKS:-$("${pip_cmd[@]}" config get global.find-links 2>/dev/null || true)}}"
    [ -f "$BUILD_CA_BUNDLE" ] || { echo "no CA bundle: set BUILD_CA_BUNDLE" >&2; return 1; }
    [ -d "$BUILD_WHEELS_DIR" ] || { echo "no wheel folder with the CPU torch wheel: set BUILD_WHEELS_DIR" >&2; return 1; }
    export BUILD_CA_BUNDLE BUILD_WHEELS_DIR
}
