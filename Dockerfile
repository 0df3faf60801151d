# One image for the coordinator and every layer worker: `dni run ...` / `dni worker ...`.
#
# Build arguments (docker/README.md has the details):
#   BASE_IMAGE       python:3.11-slim (default, pulled from Docker Hub) or the
#                    registry-free dni-base:bookworm made by docker/build-base.sh
#   DNI_OFFLINE      0 (default): pip installs from the package index
#                    1: pip installs only from docker/wheelhouse (docker/build-wheelhouse.sh),
#                       with --no-index; nothing is downloaded during the build
#   TORCH_INDEX_URL  online only, optional: an index to take torch/torchvision from
#                    first (e.g. PyTorch's CPU-only wheel index, for a smaller image)
#
# Works with the legacy builder and BuildKit alike (no BuildKit-only syntax),
# so Debian's docker.io + docker-compose v1 can build it.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ARG DNI_OFFLINE=0
ARG TORCH_INDEX_URL=
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first (layers that survive source edits).
# docker/wheelhouse always exists (it holds a README); it is only used offline,
# where the layer does not depend on pyproject.toml either.
COPY docker/wheelhouse/ /wheelhouse/
RUN set -eu; \
    if [ "$DNI_OFFLINE" = 1 ]; then \
        if [ ! -f /wheelhouse/requirements.txt ]; then \
            echo "DNI_OFFLINE=1 but docker/wheelhouse is empty: run docker/build-wheelhouse.sh first" >&2; exit 1; \
        fi; \
        pip install --no-index --find-links /wheelhouse --no-deps -r /wheelhouse/requirements.txt; \
    fi
COPY pyproject.toml /src/pyproject.toml
RUN set -eu; \
    if [ "$DNI_OFFLINE" != 1 ]; then \
        if [ -n "$TORCH_INDEX_URL" ]; then \
            pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"; \
        fi; \
        python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/deps.txt; \
        pip install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" -r /tmp/deps.txt; \
    fi

# The project itself, as a wheel: the final image installs it in a small layer
# of its own, so a source change does not copy the whole environment again.
# (Only the packages of pyproject.toml; .dockerignore lets in nothing else.)
COPY README.md /src/
COPY protocol/ /src/protocol/
COPY workers/ /src/workers/
COPY coordinator/ /src/coordinator/
COPY dni/ /src/dni/
RUN set -eu; \
    if [ "$DNI_OFFLINE" = 1 ]; then \
        pip wheel --no-index --find-links /wheelhouse --no-deps -w /dist /src; \
    else \
        pip wheel --no-deps -w /dist /src; \
    fi

# ---------------------------------------------------------------- final image
# Only the virtual environment travels on: no wheels, no build files.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="dni" \
      org.opencontainers.image.description="Decoupled Neural Interfaces: coordinator and layer workers"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    DNI_DATA_ROOT=/data
COPY --from=build /dist/ /tmp/dist/
# --no-deps: the dependencies are in the environment already.  pip check may
# only miss the CUDA packages that the CPU wheelhouse leaves out on purpose.
RUN set -eu; \
    pip install --no-index --no-deps /tmp/dist/*.whl; \
    rm -rf /tmp/dist; \
    pip check >/tmp/pip-check.txt 2>&1 || true; \
    if grep -v '^No broken requirements' /tmp/pip-check.txt | grep -vE ' requires (nvidia-|triton|cuda-)' >/dev/null; then \
        echo "missing dependencies (offline: rebuild the wheelhouse, docker/build-wheelhouse.sh):" >&2; \
        grep -vE ' requires (nvidia-|triton|cuda-)' /tmp/pip-check.txt >&2; exit 1; \
    fi; \
    rm -f /tmp/pip-check.txt; \
    python3 -c "import torch, torchvision, zmq, msgpack, numpy, matplotlib; print('torch', torch.__version__, 'CUDA available:', torch.cuda.is_available())"; \
    dni --help >/dev/null; \
    chmod -R a+rwX /tmp/matplotlib   # the font cache just built, usable by any DNI_USER
COPY docker/entrypoint.sh /usr/local/bin/dni-entrypoint
COPY docker/healthcheck.py /usr/local/bin/dni-healthcheck
COPY coordinator/jobs/ /app/jobs/
# /keys: mount point of the CURVE key volume, writable for a coordinator run as any user
RUN chmod 0755 /usr/local/bin/dni-entrypoint /usr/local/bin/dni-healthcheck && mkdir -p /data /runs && mkdir -m 1777 /keys
WORKDIR /app
# dni-entrypoint passes everything to `dni` (it only fills in cluster flags from
# DNI_* variables, see docker/README.md); `docker run IMAGE worker --bind ...`.
ENTRYPOINT ["dni-entrypoint"]
CMD ["--help"]
