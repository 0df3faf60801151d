#!/usr/bin/env bash
# Fill docker/wheelhouse with every wheel the image needs, for CPython 3.11 on
# manylinux x86_64, so that `docker build --build-arg DNI_OFFLINE=1` installs
# with `pip install --no-index` and reaches no index at all.
#
#   docker/build-wheelhouse.sh              # skip if up to date
#   DNI_FORCE=1 docker/build-wheelhouse.sh  # rebuild
#
# By default the wheelhouse is CPU-only and small (~0.6 GB instead of ~2.9 GB):
# PyPI's torch is a CUDA build whose libraries need the nvidia-* wheels just to
# be loaded.  Instead of those, the wheelhouse gets `dni-cuda-stubs`, a few
# hundred KB of stand-in libraries made by docker/cuda_stubs.py (see there);
# torch then imports and trains on the CPU exactly as with the real libraries,
# and torch.cuda.is_available() is False.  triton and cuda-bindings (needed only
# for GPU kernels / torch.compile on a GPU) are left out too.
#
# Environment:
#   DNI_WHEELHOUSE        output folder           (default docker/wheelhouse)
#   DNI_WHEELHOUSE_CUDA=1 keep the real nvidia-*, triton and cuda-* wheels
#                         (a GPU-capable image, ~4 GB bigger)
#   DNI_FORCE=1           rebuild even if up to date
#   DNI_CACHE             cache for the generated stub wheel
#                         (default ${XDG_CACHE_HOME:-~/.cache}/dni-docker)
# pip's own configuration (index, find-links, constraints) applies as usual.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="${DNI_WHEELHOUSE:-$ROOT/docker/wheelhouse}"
CUDA="${DNI_WHEELHOUSE_CUDA:-0}"
CACHE="${DNI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dni-docker}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
PYTHON="${PYTHON:-python3}"

log() { printf '[build-wheelhouse] %s\n' "$*" >&2; }

# What the image needs: the pinned torch pair, the project's dependencies
# (from pyproject.toml), and the project's build backend.
read_pyproject() {  # $1 = dependencies | build
    "$PYTHON" - "$ROOT/pyproject.toml" "$1" <<'PY'
import sys
try:
    import tomllib
except ModuleNotFoundError:           # Python < 3.11
    import tomli as tomllib
path, what = sys.argv[1], sys.argv[2]
try:
    data = tomllib.load(open(path, "rb"))
except FileNotFoundError:
    data = {}
if what == "build":
    reqs = data.get("build-system", {}).get("requires", ["setuptools>=64"])
else:
    reqs = data.get("project", {}).get("dependencies", [])
print("\n".join(reqs))
PY
}
mapfile -t PROJECT_DEPS < <(read_pyproject dependencies)
mapfile -t BUILD_DEPS < <(read_pyproject build)
RUNTIME=("torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" pyzmq msgpack numpy matplotlib "${PROJECT_DEPS[@]}")

stamp=$( { printf '%s\n' "cuda=$CUDA" "${RUNTIME[@]}" -- "${BUILD_DEPS[@]}"
           cat "$ROOT/docker/build-wheelhouse.sh" "$ROOT/docker/cuda_stubs.py"; } | sha256sum | cut -c1-16)
if [[ "${DNI_FORCE:-0}" != 1 && -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$stamp" ]]; then
    log "$OUT is up to date ($(du -sh "$OUT" | cut -f1); DNI_FORCE=1 to rebuild)"
    exit 0
fi

# Wheels for the image's Python (3.11, manylinux x86_64; Debian bookworm has
# glibc 2.36), whatever Python runs this script.
PLATFORM=()
for m in $(seq 36 -1 5); do PLATFORM+=(--platform "manylinux_2_${m}_x86_64"); done
PLATFORM+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
download() {  # download DIR REQ...
    local dir=$1 status=0; shift
    "$PYTHON" -m pip download --disable-pip-version-check -q -d "$dir" --only-binary=:all: \
        "${PLATFORM[@]}" --python-version 3.11 --implementation cp --abi cp311 "$@" \
        >"$TMP/pip.log" 2>&1 || status=$?
    # (drop a harmless warning some pip configurations print for every package)
    grep -v "is ignored: it is neither a file nor a directory" "$TMP/pip.log" >&2 || true
    return $status
}

start=$(date +%s)
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d "$(dirname "$OUT")/.wheelhouse-tmp.XXXXXX")   # same file system: cheap mv
trap 'rm -rf "$TMP"' EXIT
log "downloading: ${RUNTIME[*]}"
download "$TMP/runtime" "${RUNTIME[@]}"
log "downloaded $(ls "$TMP/runtime" | wc -l) wheels ($(du -sh "$TMP/runtime" | cut -f1)) in $(( $(date +%s) - start ))s"

mkdir -p "$TMP/house"
IS_CUDA='^(nvidia_|triton-|cuda_toolkit-|cuda_bindings-|cuda_pathfinder-)'
if [[ "$CUDA" == 1 ]]; then
    mv "$TMP"/runtime/*.whl "$TMP/house/"
else
    torch_whl=$(ls "$TMP"/runtime/torch-*.whl)
    key=$( { basename "$torch_whl"; basename "$TMP"/runtime/torchvision-*.whl
             cat "$ROOT/docker/cuda_stubs.py"; } | sha256sum | cut -c1-16)
    if ! ls "$CACHE/stubs-$key"/dni_cuda_stubs-*.whl >/dev/null 2>&1; then
        log "generating CUDA stub libraries (docker/cuda_stubs.py)"
        rm -rf "$CACHE/stubs-$key"; mkdir -p "$CACHE/stubs-$key.tmp"
        "$PYTHON" "$ROOT/docker/cuda_stubs.py" --wheels "$TMP/runtime" --out "$CACHE/stubs-$key.tmp" >/dev/null
        mv "$CACHE/stubs-$key.tmp" "$CACHE/stubs-$key"
    fi
    cp "$CACHE/stubs-$key"/dni_cuda_stubs-*.whl "$TMP/house/"
    for w in "$TMP"/runtime/*.whl; do
        [[ ${w##*/} =~ $IS_CUDA ]] || mv "$w" "$TMP/house/"
    done
fi

# requirements.txt: exactly the runtime wheels, pinned (the Dockerfile installs
# them with --no-deps, so the left-out CUDA packages are never asked for).
for w in "$TMP"/house/*.whl; do
    b=$(basename "$w" .whl)
    name=${b%%-*}; rest=${b#*-}; version=${rest%%-*}
    printf '%s==%s\n' "${name//_/-}" "$version"
done | sort -f >"$TMP/house/requirements.txt"

# The project's build backend (pip's isolated build takes it from here too).
download "$TMP/house" "${BUILD_DEPS[@]}"

# Swap in the new wheelhouse (keeping the committed README.md).
mkdir -p "$OUT"
find "$OUT" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
mv "$TMP"/house/* "$OUT/"
echo "$stamp" >"$OUT/.stamp"
log "$OUT: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1), cuda=$CUDA, in $(( $(date +%s) - start ))s"
