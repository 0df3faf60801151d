#!/bin/sh
# Entry point of the dni image.  Passes its arguments to `dni` (a leading
# "dni" is dropped, so `docker compose run coordinator dni run JOB` and
# `docker-compose run coordinator dni run JOB` work), or
# runs another program given by name (`docker run IMAGE python -c ...`).
#
# Fills in what the command line does not already give, from the environment
# (docker-compose.yml sets these; with none of them set this is plain `dni`):
#
# dni run and dni worker:
#   DNI_KEYS       --keys DIR: the CURVE key directory shared by all containers
#                  (tcp:// beyond loopback needs keys).  `dni run` creates the
#                  keys there if the directory holds none; `dni worker` waits up
#                  to DNI_KEYS_WAIT seconds (default 300) for them to appear.
#                  Not added when the command gives --keys or --insecure.
# dni run only, and only when DNI_WORKERS is set:
#   DNI_WORKERS    --workers     tcp://stage0:5555,tcp://stage1:5555,...
#   DNI_BIND       --bind        (default tcp://0.0.0.0:5550)
#   DNI_ADVERTISE  --advertise   (default tcp://<this container's IP>:<bind port>,
#                                 reachable also from a `docker compose run` /
#                                 `docker-compose run` container)
#   DNI_RESULTS    --results
#   DNI_RUN_ARGS   default flags for every `dni run` (e.g. "--threads 1"); the
#                  command line overrides them
# The data root comes from DNI_DATA_ROOT, which dni reads itself.
set -eu

if [ "${1:-}" = dni ]; then
    shift
elif [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && command -v "$1" >/dev/null 2>&1; then
    exec "$@"                      # some other program: python, sh, ...
fi

has() {                            # has FLAG ARGS...: is --flag (or --flag=...) given?
    flag=$1; shift
    for a in "$@"; do
        case "$a" in "$flag"|"$flag"=*) return 0;; esac
    done
    return 1
}

keys_ready() {                     # the files `dni keys` writes, the authorised key last
    [ -f "$1/server.key_secret" ] && [ -f "$1/client.key_secret" ] && \
        ls "$1"/authorized/*.key >/dev/null 2>&1
}

make_keys() {                      # create keys in $1 atomically (in a new folder, renamed into place)
    dir=$1
    keys_ready "$dir" && return 0
    tmp="$dir.new.$$"
    dni keys "$tmp" >/dev/null
    rmdir "$dir" 2>/dev/null || true        # an empty mount point or leftover folder
    if mv -T "$tmp" "$dir" 2>/dev/null; then
        echo "dni-entrypoint: created CURVE keys in $dir" >&2
    else
        rm -rf "$tmp"                       # someone else was quicker
        keys_ready "$dir" || { echo "dni-entrypoint: cannot create keys in $dir" >&2; exit 2; }
    fi
}

wait_keys() {
    dir=$1; waited=0; limit=${DNI_KEYS_WAIT:-300}
    until keys_ready "$dir"; do
        if [ "$waited" -ge "$limit" ]; then
            echo "dni-entrypoint: no CURVE keys in $dir after ${limit}s (the coordinator creates them;" \
                 "or make them with \`dni keys DIR\` and mount DIR)" >&2
            exit 2
        fi
        [ "$waited" -gt 0 ] || echo "dni-entrypoint: waiting for CURVE keys in $dir" >&2
        sleep 1; waited=$((waited + 1))
    done
}

case "${1:-}" in
worker)
    if [ -n "${DNI_KEYS:-}" ] && ! has --keys "$@" && ! has --insecure "$@"; then
        wait_keys "$DNI_KEYS"
        set -- "$@" --keys "$DNI_KEYS"
    fi
    ;;
run)
    if [ -n "${DNI_WORKERS:-}" ]; then
        # DNI_RUN_ARGS go first, so flags on the command line win over them
        shift
        # shellcheck disable=SC2086  # DNI_RUN_ARGS is a list of words on purpose
        set -- run ${DNI_RUN_ARGS:-} "$@"
        has --workers "$@" || set -- "$@" --workers "$DNI_WORKERS"
        bind="${DNI_BIND:-tcp://0.0.0.0:5550}"
        has --bind "$@" || set -- "$@" --bind "$bind"
        if ! has --advertise "$@"; then
            advertise="${DNI_ADVERTISE:-}"
            if [ -z "$advertise" ]; then
                ip=$(python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')
                advertise="tcp://$ip:${bind##*:}"
            fi
            set -- "$@" --advertise "$advertise"
        fi
        if [ -n "${DNI_RESULTS:-}" ] && ! has --results "$@"; then
            set -- "$@" --results "$DNI_RESULTS"
        fi
    fi
    if [ -n "${DNI_KEYS:-}" ] && ! has --keys "$@" && ! has --insecure "$@"; then
        make_keys "$DNI_KEYS"
        set -- "$@" --keys "$DNI_KEYS"
    fi
    echo "dni-entrypoint: dni $*" >&2
    ;;
esac
exec dni "$@"
