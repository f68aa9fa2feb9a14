#!/usr/bin/env bash
# Build the service's image (zh-tagger:cpu) and check it for real, with Docker or Podman.
#
#   deploy/container/image_test.sh build   (make image)       build the image
#   deploy/container/image_test.sh test    (make image-test)  build it (from the layer cache when
#        nothing changed), run it read-only and check it, then run docker-compose.yml's
#        app + prometheus and check that Prometheus scrapes the app and loads the alert rules.
#        Everything it starts is removed at the end (the images stay, as a cache).
#
# Environment (all optional):
#   CONTAINER_ENGINE   docker or podman (default: docker if its daemon answers, else podman)
#   PYTHON_IMAGE, TORCH_INDEX_URL            build arguments (see the Dockerfile)
#   BUILD_PIP_CONF, BUILD_CA_BUNDLE          files passed as build secrets pip_conf and ca_bundle
#   BUILD_WHEELS_DIR                         a folder passed as the build context `wheels` (find-links)
#   CONTAINER_SANDBOX  1: use deploy/container/sandbox.sh (this project's CI machines), 0: never;
#                      unset: when the engine is Podman and Docker Hub does not answer
#   COMPOSE=0          skip the compose part;  TEST_PORT, PROMETHEUS_TEST_PORT: published ports
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MODE=${1:-test}
IMAGE=zh-tagger:cpu   # what docker-compose.yml runs
TEST_PORT=${TEST_PORT:-18500}
PROMETHEUS_TEST_PORT=${PROMETHEUS_TEST_PORT:-19090}
COMPOSE=${COMPOSE:-1}
PROJECT=zh-tagger-image-test   # the compose project: not the `zh-tagger` of a real deployment
PODMAN_COMPOSE_VERSION=1.6.0
TEXT='国务院总理李鹏今天在北京会见了日本客人。'
CHARS=$(python3 -c 'import sys; print(len(sys.argv[1]))' "$TEXT")   # characters, whatever the locale

T0=$SECONDS
step() { printf '\n=== [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }
now() { echo "$EPOCHREALTIME"; }
since() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$1" "$(now)"; }   # seconds, 0.1 s
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

case $MODE in build | test) ;; *) echo "usage: $0 [build|test]" >&2; exit 2 ;; esac
cd "$ROOT"
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/zh-tagger-image-test.XXXXXX")

# ---- engine --------------------------------------------------------------------------------
if [ -z "${CONTAINER_ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1 && ! docker --version | grep -qi podman; then CONTAINER_ENGINE=docker
    elif command -v podman >/dev/null; then CONTAINER_ENGINE=podman
    else fail "no container engine: install Docker, or Podman (Debian: apt-get install podman buildah runc)"; fi
fi
ENGINE=$CONTAINER_ENGINE
case $ENGINE in docker | podman) ;; *) fail "CONTAINER_ENGINE must be docker or podman, not $ENGINE" ;; esac

if [ -z "${CONTAINER_SANDBOX:-}" ]; then
    CONTAINER_SANDBOX=0
    if [ "$ENGINE" = podman ] && ! curl -s -o /dev/null --max-time 10 https://registry-1.docker.io/v2/; then
        CONTAINER_SANDBOX=1
    fi
fi

if [ "$CONTAINER_SANDBOX" = 1 ]; then
    step "sandbox settings (deploy/container/sandbox.sh): engine configuration, base image, build inputs"
    [ "$ENGINE" = podman ] || fail "the sandbox settings are for Podman"
    # shellcheck source=deploy/container/sandbox.sh
    source "$HERE/sandbox.sh"
    sandbox_engine_config
    sandbox_python_image
    sandbox_build_inputs
fi
step "engine: $ENGINE"
if [ "$ENGINE" = podman ]; then
    podman info --format 'podman {{.Version.Version}}, storage {{.Store.GraphDriverName}}, cgroups {{.Host.CgroupsVersion}}/{{.Host.CgroupManager}}, runtime {{.Host.OCIRuntime.Name}}'
    # Docker's image format: OCI (Podman's default) has no HEALTHCHECK. Also read by podman-compose's builds.
    export BUILDAH_FORMAT=docker
else
    docker version --format 'docker {{.Server.Version}}'
fi

# ---- build ---------------------------------------------------------------------------------
BUILD=("$ENGINE" build --target runtime -t "$IMAGE")
[ "$ENGINE" = podman ] && BUILD+=(--format docker --layers)
[ -n "${PYTHON_IMAGE:-}" ] && BUILD+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${TORCH_INDEX_URL+set}" ] && BUILD+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
[ -n "${BUILD_PIP_CONF:-}" ] && BUILD+=(--secret "id=pip_conf,src=$BUILD_PIP_CONF")
[ -n "${BUILD_CA_BUNDLE:-}" ] && BUILD+=(--secret "id=ca_bundle,src=$BUILD_CA_BUNDLE")
[ -n "${BUILD_WHEELS_DIR:-}" ] && BUILD+=(--build-context "wheels=$BUILD_WHEELS_DIR")

step "build $IMAGE (log: $LOGS/build.log)"
echo "${BUILD[*]} ."
t=$SECONDS
"${BUILD[@]}" . >"$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; fail "the build failed"; }
BUILD_S=$((SECONDS - t))
grep -E '^torch [0-9]' "$LOGS/build.log" | tail -1 | sed 's/^/build stage: /' || true
SIZE=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
SIZE_MB=$((SIZE / 1000000))
echo "built in ${BUILD_S} s ($(grep -c -i 'using cache\|CACHED' "$LOGS/build.log" || true) steps from the cache); image size ${SIZE_MB} MB"
if [ "$MODE" = build ]; then
    rm -rf "$LOGS"
    step "done: $IMAGE"
    exit 0
fi

# ---- cleanup of everything started below ---------------------------------------------------
CID=
COMPOSE_CMD=()
PCVENV=
cleanup() {
    local rc=$?
    set +e
    [ -n "$CID" ] && "$ENGINE" rm -f "$CID" >/dev/null 2>&1
    if [ ${#COMPOSE_CMD[@]} -gt 0 ]; then "${COMPOSE_CMD[@]}" down -v >"$LOGS/compose-down.log" 2>&1; fi
    [ -n "$PCVENV" ] && rm -rf "$PCVENV"
    if [ $rc -eq 0 ]; then rm -rf "$LOGS"; else echo "logs kept in $LOGS" >&2; fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # through cleanup

# ---- the image, alone ----------------------------------------------------------------------
step "the image: user, torch, health check, no build secrets"
HEALTH=$("$ENGINE" image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")
case $HEALTH in *healthz*) ok "HEALTHCHECK in the image: $HEALTH" ;; *) fail "no HEALTHCHECK in the image (podman: build with --format docker): $HEALTH" ;; esac
ID=$("$ENGINE" run --rm --no-healthcheck --network none --entrypoint id "$IMAGE")
echo "id: $ID"
[[ $ID =~ ^uid=10001\(ner\)\ gid=10001\(ner\) ]] || fail "expected uid=10001(ner) gid=10001(ner)"
ok "user ner (uid 10001), group ner (gid 10001)"
TORCH=$("$ENGINE" run --rm --no-healthcheck --network none --entrypoint python "$IMAGE" -c 'import torch; print(torch.__version__, torch.version.cuda)')
echo "torch: $TORCH"
[ "${TORCH#* }" = None ] || fail "torch.version.cuda is ${TORCH#* }, not None: not the CPU build"
ok "torch.version.cuda is None (CPU build)"
# Nothing of the build's pip configuration, CA bundle or wheels in the image: none of their
# mount points, neither the project's wheel nor one of BUILD_WHEELS_DIR, and no file with the
# CA bundle's or pip.conf's content that the base image does not have too (a base image may
# hold the same system CA bundle).
SUMS=
for f in "${BUILD_CA_BUNDLE:-}" "${BUILD_PIP_CONF:-}"; do [ -s "$f" ] && SUMS+="$(stat -c %s "$f") $(sha256sum <"$f" | cut -d' ' -f1) "; done
WHEELS="zh_tagger-*.whl"
for f in "${BUILD_WHEELS_DIR:-/nonexistent}"/*.whl; do [ -e "$f" ] && WHEELS+=" ${f##*/}"; done
# shellcheck disable=SC2016
FIND_LEFTOVERS='set -f
    for p in /etc/pip.conf /run/secrets /run/wheels /wheels; do [ ! -e "$p" ] || echo "$p"; done
    for w in $2; do find / -xdev -name "$w" 2>/dev/null; done
    set -- $1
    while [ $# -ge 2 ]; do
        for f in $(find / -xdev -type f -size "$1"c 2>/dev/null); do [ "$(sha256sum <"$f" | cut -d" " -f1)" != "$2" ] || echo "$f"; done
        shift 2
    done'
BASE_IMAGE=${PYTHON_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)}
"$ENGINE" run --rm --no-healthcheck --network none --user 0 --entrypoint sh "$IMAGE" -c "$FIND_LEFTOVERS" sh "$SUMS" "$WHEELS" | sort >"$LOGS/leftovers-image" \
    || fail "could not search the image"
"$ENGINE" run --rm --network none --user 0 --entrypoint sh "$BASE_IMAGE" -c "$FIND_LEFTOVERS" sh "$SUMS" "$WHEELS" | sort >"$LOGS/leftovers-base" \
    || fail "could not search the base image $BASE_IMAGE"
LEFT=$(comm -23 "$LOGS/leftovers-image" "$LOGS/leftovers-base")
[ -z "$LEFT" ] || fail "build inputs left in the image: $(echo $LEFT)"
ok "no pip.conf, CA bundle, secrets or wheels left in the image"

step "run it read-only (--read-only --tmpfs /tmp) on port $TEST_PORT"
t=$SECONDS
t_start=$(now)
CID=$("$ENGINE" run -d --read-only --tmpfs /tmp -p "127.0.0.1:$TEST_PORT:8000" "$IMAGE" 2>"$LOGS/run.err") \
    || { cat "$LOGS/run.err"; fail "the container did not start"; }
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$TEST_PORT/readyz")" = 200 ]; do
    if [ $((SECONDS - t)) -gt 120 ] || [ "$("$ENGINE" inspect --format '{{.State.Running}}' "$CID")" != true ]; then
        "$ENGINE" logs "$CID" 2>&1 | tail -30
        fail "/readyz not 200 within 120 s"
    fi
    sleep 0.25
done
READY_S=$(since "$t_start")
ok "/readyz 200, ${READY_S} s after the start (run -d to ready)"

TAGGED=$(curl -sf -XPOST "http://127.0.0.1:$TEST_PORT/tag" -H 'content-type: application/json' -d "{\"text\": \"$TEXT\"}") \
    || fail "POST /tag failed"
echo "POST /tag: $TAGGED" | cut -c1-400
ENTITIES=$(printf '%s' "$TAGGED" | python3 -c 'import json, sys; r = json.load(sys.stdin)["results"][0]; print(" ".join(e["text"] + "/" + e["type"] for e in r["entities"]))')
echo "entities: $ENTITIES"
for want in 李鹏/PER 北京/LOC; do [[ " $ENTITIES " == *" $want "* ]] || fail "/tag: $want not found"; done
ok "/tag finds 李鹏/PER and 北京/LOC"
MODEL=$(curl -sf "http://127.0.0.1:$TEST_PORT/model") || fail "GET /model failed"
printf '%s' "$MODEL" | python3 -c 'import json, sys; m = json.load(sys.stdin); assert m["device"] == "cpu", m["device"]; print("ok: /model:", m["name"], m["version"], "on", m["device"], m["precision"])'
METRICS=$(curl -sf "http://127.0.0.1:$TEST_PORT/metrics") || fail "GET /metrics failed"
COUNTED=$(grep -E '^ner_characters_total ' <<<"$METRICS" || true)
echo "/metrics: $COUNTED"
[[ $COUNTED =~ ^ner_characters_total\ $CHARS(\.0)?$ ]] || fail "/metrics: ner_characters_total is not $CHARS"
ok "/metrics counts the $CHARS characters tagged"

if [ "$ENGINE" = podman ]; then
    podman healthcheck run "$CID" >/dev/null 2>&1 || fail "podman healthcheck run: unhealthy"
    ok "health check: $(podman inspect --format '{{.State.Health.Status}}' "$CID") (podman healthcheck run)"
else
    # Docker runs the check on its own, the first one an interval (30 s) after the start.
    until [ "$(docker inspect --format '{{.State.Health.Status}}' "$CID")" = healthy ]; do
        [ $((SECONDS - t)) -gt 100 ] && fail "health status $(docker inspect --format '{{.State.Health.Status}}' "$CID")"
        sleep 2
    done
    ok "health check: healthy"
fi
echo "id in the container: $("$ENGINE" exec "$CID" id)"
[ "$("$ENGINE" inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$CID")" = true ] || fail "the root filesystem is not read-only"
if "$ENGINE" exec "$CID" sh -c 'touch /opt/venv/x' 2>/dev/null; then fail "could write to /opt/venv"; fi
"$ENGINE" exec "$CID" sh -c 'touch /tmp/x && ls /tmp/ner-metrics >/dev/null' || fail "/tmp is not writable"
ok "read-only root filesystem (writing /opt/venv fails), /tmp writable"
t_stop=$(now)
"$ENGINE" stop -t 20 "$CID" >/dev/null 2>>"$LOGS/run.err"
[ "$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$CID")" = 0 ] || fail "exit code $("$ENGINE" inspect --format '{{.State.ExitCode}}' "$CID") after SIGTERM, not 0"
ok "stopped by SIGTERM in $(since "$t_stop") s, exit code 0"
"$ENGINE" rm -f "$CID" >/dev/null 2>&1 || true
CID=

# ---- docker-compose.yml: app + prometheus --------------------------------------------------
if [ "$COMPOSE" = 1 ]; then
    step "docker-compose.yml: app + prometheus (project $PROJECT)"
    if [ "$ENGINE" = docker ]; then
        if docker compose version >/dev/null 2>&1; then COMPOSE_CMD=(docker compose); else COMPOSE_CMD=(docker-compose); fi
    elif command -v podman-compose >/dev/null; then
        COMPOSE_CMD=(podman-compose)
    else
        PCVENV=$(mktemp -d "${TMPDIR:-/tmp}/podman-compose.XXXXXX")
        echo "podman-compose $PODMAN_COMPOSE_VERSION from PyPI in a throwaway venv"
        python3 -m venv "$PCVENV" && "$PCVENV/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION" >"$LOGS/pip.log" 2>&1 \
            || { tail -20 "$LOGS/pip.log"; fail "could not install podman-compose"; }
        COMPOSE_CMD=("$PCVENV/bin/podman-compose")
    fi
    if [ "$CONTAINER_SANDBOX" = 1 ]; then
        sandbox_prometheus_image
        echo "Prometheus image (sandbox): $PROMETHEUS_IMAGE"
    fi
    # GRAFANA_ADMIN_PASSWORD is left unset: only Grafana needs it.
    unset GRAFANA_ADMIN_PASSWORD
    export NER_PUBLISHED_PORT=$TEST_PORT PROMETHEUS_PUBLISHED_PORT=$PROMETHEUS_TEST_PORT
    COMPOSE_CMD+=(-p "$PROJECT" -f docker-compose.yml)
    "${COMPOSE_CMD[@]}" config >"$LOGS/compose-config.yml" 2>&1 || { cat "$LOGS/compose-config.yml"; fail "compose config failed"; }
    "${COMPOSE_CMD[@]}" down -v >/dev/null 2>&1 || true   # leftovers of an interrupted run
    "${COMPOSE_CMD[@]}" up -d --no-build app prometheus >"$LOGS/compose-up.log" 2>&1 \
        || { tail -30 "$LOGS/compose-up.log"; fail "compose up failed"; }
    t=$SECONDS
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$TEST_PORT/readyz")" = 200 ]; do
        [ $((SECONDS - t)) -gt 120 ] && { "${COMPOSE_CMD[@]}" logs app 2>&1 | tail -30; fail "compose: app not ready within 120 s"; }
        sleep 0.5
    done
    ok "compose app ready after $((SECONDS - t)) s"
    REQUESTS=10
    for _ in $(seq $REQUESTS); do
        curl -sf -o /dev/null -XPOST "http://127.0.0.1:$TEST_PORT/tag" -H 'content-type: application/json' -d "{\"text\": \"$TEXT\"}" || fail "compose: POST /tag failed"
    done
    SENT=$((REQUESTS * $CHARS))
    echo "sent $REQUESTS requests, $SENT characters, to the app's workers"

    prom() { curl -sf --get "http://127.0.0.1:$PROMETHEUS_TEST_PORT/api/v1/$1" ${2:+--data-urlencode "query=$2"}; }
    value() { python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'; }
    t=$SECONDS
    until [ "$(prom query 'up{job="ner"}' 2>/dev/null | value)" = 1 ] \
        && [ "$(prom query 'sum(ner_characters_total)' | value)" = "$SENT" ]; do
        if [ $((SECONDS - t)) -gt 90 ]; then
            "${COMPOSE_CMD[@]}" logs prometheus 2>&1 | tail -20
            fail "Prometheus: up{job=\"ner\"} $(prom query 'up{job="ner"}' | value), sum(ner_characters_total) $(prom query 'sum(ner_characters_total)' | value), expected 1 and $SENT"
        fi
        sleep 2
    done
    echo "Prometheus query up: $(prom query up | python3 -c 'import json, sys; print(", ".join(r["metric"]["job"] + "=" + r["value"][1] for r in json.load(sys.stdin)["data"]["result"]))')"
    echo "Prometheus query sum(ner_characters_total): $(prom query 'sum(ner_characters_total)' | value) (after $((SECONDS - t)) s)"
    ok "Prometheus scrapes the app: up{job=\"ner\"} 1, sum(ner_characters_total) = $SENT characters sent"
    RULES=$(prom rules | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
bad = [r["name"] for r in rules if r.get("health") != "ok" and r.get("health") != "unknown"]
print(len(rules), " ".join(sorted(r["name"] for r in rules)), "|bad:" + ",".join(bad))')
    echo "Prometheus /api/v1/rules: $RULES"
    EXPECTED=$(python3 -c 'import re, sys; print(" ".join(sorted(re.findall(r"^\s*- alert: (\w+)", open("deploy/prometheus/alerts.yml").read(), re.M))))')
    [ "${RULES%% |bad:*}" = "$(wc -w <<<"$EXPECTED") $EXPECTED" ] || fail "the rules Prometheus loaded are not those of deploy/prometheus/alerts.yml ($EXPECTED)"
    [ "${RULES##*|bad:}" = "" ] || fail "rules with errors: ${RULES##*|bad:}"
    ok "alert rules loaded: $(wc -w <<<"$EXPECTED")"
    "${COMPOSE_CMD[@]}" down -v >"$LOGS/compose-down.log" 2>&1 || { cat "$LOGS/compose-down.log"; fail "compose down failed"; }
    COMPOSE_CMD=()
    # Containers, volumes and networks of the project (compose names them PROJECT_... or PROJECT-...).
    LEFT=$({ "$ENGINE" ps -a --format '{{.Names}}'; "$ENGINE" volume ls --format '{{.Name}}'; "$ENGINE" network ls --format '{{.Name}}'; } | grep -E "^${PROJECT}[_-]" || true)
    [ -z "$LEFT" ] || fail "left by compose down: $(echo $LEFT)"
    ok "compose down: no container, volume or network of $PROJECT left"
fi

step "done: $IMAGE, ${SIZE_MB} MB, built in ${BUILD_S} s, ready ${READY_S} s after the start; id: $ID; torch $TORCH (cuda None)"
