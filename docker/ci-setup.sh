#!/usr/bin/env bash
# Everything the Docker tests need, from a bare Debian machine (as root):
#   1. Docker engine, Compose and debootstrap from Debian's packages
#   2. dockerd running (started in the background if it is not)
#   3. the registry-free base image        (docker/build-base.sh)
#   4. the wheelhouse                      (docker/build-wheelhouse.sh)
#   5. the dni image, offline              (docker build ... -t $DNI_IMAGE)
# Idempotent: each step is skipped or cached when its result already exists.
# Prints how long each step took.  Afterwards run: pytest -m docker
#
# Compose: Debian bookworm has no `docker compose` v2 plugin package (no
# docker-compose-v2 / docker-compose-plugin), so this installs docker-compose
# 1.29; where a v2 plugin package exists it is installed instead.  The test uses
# `docker compose` when it works and `docker-compose` otherwise.

# candidate_available PKG: apt has a version of PKG to install.  The output is
# captured first: `apt-cache policy PKG | grep -q ...` fails under pipefail
# whenever grep exits at the match and apt-cache dies of SIGPIPE.
candidate_available() {
    local policy
    policy=$(apt-cache policy "$1" 2>/dev/null) || return 1
    [[ $policy == *"Candidate: "[0-9]* ]]
}

# compose_package: the first Compose package apt can install (v2 plugin first).
compose_package() {
    local c
    for c in docker-compose-v2 docker-compose-plugin docker-compose; do
        if candidate_available "$c"; then echo "$c"; return 0; fi
    done
    return 1
}

# Sourced (tests/e2e/test_ci_setup.py): define the functions only.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE="${DNI_IMAGE:-dni:latest}"
BASE_IMAGE="${DNI_BASE_IMAGE:-dni-base:bookworm}"
DOCKERD_LOG="${DNI_DOCKERD_LOG:-/var/log/dni-dockerd.log}"

t0=$(date +%s)
step_start=$t0
step() {  # step NAME: print the time the previous step took, then NAME
    local now; now=$(date +%s)
    [[ -z "${current:-}" ]] || printf '[ci-setup] %-28s %4ds\n' "$current" $(( now - step_start )) >&2
    current=$1; step_start=$now
    [[ "$1" == "done" ]] || printf '[ci-setup] %s ...\n' "$1" >&2
}
SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo

# --- 1. packages ------------------------------------------------------------
step "packages"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v readelf >/dev/null || need+=(binutils)
command -v gcc >/dev/null || need+=(gcc)
have_compose_v2() { docker compose version >/dev/null 2>&1; }
if ! have_compose_v2 && ! command -v docker-compose >/dev/null; then need+=(COMPOSE); fi
if (( ${#need[@]} )); then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    pkgs=()
    for p in "${need[@]}"; do
        if [[ $p == COMPOSE ]]; then
            c=$(compose_package) || { echo "[ci-setup] apt has no Compose package" >&2; exit 1; }
            pkgs+=("$c")
        else
            pkgs+=("$p")
        fi
    done
    printf '[ci-setup] apt-get install %s\n' "${pkgs[*]}" >&2
    $SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# --- 2. the engine ----------------------------------------------------------
step "dockerd"
if ! docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        $SUDO systemctl start docker
    else
        # no init system (a container or CI sandbox): run it in the background
        $SUDO mkdir -p "$(dirname "$DOCKERD_LOG")"
        $SUDO rm -f /var/run/docker.pid
        nohup $SUDO dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "[ci-setup] dockerd did not come up; last lines of $DOCKERD_LOG:" >&2
        tail -n 30 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
fi
printf '[ci-setup] engine %s, compose: %s\n' "$(docker version -f '{{.Server.Version}}')" \
    "$(docker compose version --short 2>/dev/null || docker-compose version --short 2>/dev/null || echo none)" >&2

# --- 3. base image ----------------------------------------------------------
step "base image"
$SUDO env DNI_BASE_IMAGE="$BASE_IMAGE" "$ROOT/docker/build-base.sh"

# --- 4. wheelhouse ----------------------------------------------------------
step "wheelhouse"
"$ROOT/docker/build-wheelhouse.sh"

# --- 5. image ---------------------------------------------------------------
step "image"
# The legacy builder (Debian's engine, no buildx) prints a deprecation notice: harmless.
if ! docker build -q -t "$IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg DNI_OFFLINE=1 \
        "$ROOT" >/tmp/dni-image-build.log 2>&1; then
    tail -n 40 /tmp/dni-image-build.log >&2
    exit 1
fi
printf '[ci-setup] %s: %s MB\n' "$IMAGE" "$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d", $1/1e6}')" >&2

step "done"
printf '[ci-setup] total %ds\n' $(( $(date +%s) - t0 )) >&2
