# agent-sidecar: one image for the sidecar (`serve`) and the webhook (`webhook serve`).
# Build: docker build -t ghcr.io/agent-sidecar/agent-sidecar:0.1.0 .

# Build stage: install the project exactly as the tests do (`pip install .`) into a venv.
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN python -m venv /opt/agent-sidecar \
 && /opt/agent-sidecar/bin/pip install . \
 && /opt/agent-sidecar/bin/agent-sidecar --version

# Final stage: the same slim base, the venv, nothing else (no compilers, no pip cache).
FROM python:3.11.7-slim-bookworm
COPY --from=build /opt/agent-sidecar /opt/agent-sidecar
COPY rego /etc/agent-sidecar/policy
ENV PATH=/opt/agent-sidecar/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["agent-sidecar"]
CMD ["--help"]
