# agent-sidecar: one image for the sidecar (`serve`), the webhook (`webhook serve`) and the
# egress lock (`egress-lock`, the injected init container).
# Build: docker build -t ghcr.io/agent-sidecar/agent-sidecar:0.1.0 .
# Without a Docker daemon: `make image-check` (buildah; see docs/kubernetes.md).
#
# BASE is the official Python image; `make image-check` passes a stand-in built from Debian's
# own packages where that image cannot be pulled (same Debian release, same Python minor).
ARG BASE=python:3.11.7-slim-bookworm

# Build stage: install the project exactly as the tests do (`pip install .`) into a venv.
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# (Build secret build_ca: a CA bundle for a TLS-intercepting proxy between the builder and
# PyPI, as `make image-check` passes on machines that have one; never part of the image.)
RUN --mount=type=secret,id=build_ca \
    if [ -s /run/secrets/build_ca ]; then export PIP_CERT=/run/secrets/build_ca; fi \
 && python -m venv /opt/agent-sidecar \
 && /opt/agent-sidecar/bin/pip install .

# Final stage: the same base, the venv, and the two system libraries the code needs at run
# time: libatomic1 (the embedded engine's native library links it; the slim base lacks it)
# and nftables (the egress lock). No compilers, no pip cache, no apt lists.
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libatomic1 nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/agent-sidecar /opt/agent-sidecar
COPY rego /etc/agent-sidecar/policy
COPY tools/image/smoke-input.json /usr/share/agent-sidecar/smoke-input.json
ENV PATH=/opt/agent-sidecar/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A broken image cannot be built: the shipped policy compiles and passes its checks, its Rego
# tests pass, and the engine makes one real decision (as the user the sidecar runs as).
USER 65532:65532
RUN agent-sidecar policy check /etc/agent-sidecar/policy \
 && agent-sidecar policy test /etc/agent-sidecar/policy \
 && agent-sidecar policy eval --policy /etc/agent-sidecar/policy \
      --input /usr/share/agent-sidecar/smoke-input.json --expect allow >/dev/null
ENTRYPOINT ["agent-sidecar"]
CMD ["--help"]
