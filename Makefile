# agent-sidecar: `make demo` runs the whole path end to end; `make test` is what CI runs.
# `make test PYTHON=python3.13`: another interpreter gets its own venv (.venv-python3.13).
PYTHON ?= python3
PYTHON_BIN := $(shell tools/find-python $(PYTHON))
VENV   ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# OPA's own Go engine, the test-only reference for the embedded one (tests/oracle/). It declares
# Python >= 3.14, but its wheel (a ctypes binding to a Go shared library) runs on 3.11+.
ORACLE := opa-golib-python-bindings==0.4.4
ORACLE_STAMP := $(VENV)/.oracle

.PHONY: venv demo run test lint unit rego bench soak proto install-check image-check k8s-policy clean

$(STAMP): pyproject.toml
	$(PYTHON_BIN) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# Never fatal here: without it the oracle tests skip and say why (CI requires it, see .ci/run).
$(ORACLE_STAMP): $(STAMP) Makefile
	$(BIN)/python -m pip install -q --disable-pip-version-check --ignore-requires-python $(ORACLE) \
		|| echo "warning: $(ORACLE) could not be installed; tests/oracle will skip"
	touch $@

# Only the venv: `. .venv/bin/activate` then puts `agent-sidecar` on PATH (docs/walkthrough.md).
venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo/run.py

# The quickstart: the sidecar and the example upstreams, left running until Ctrl-C.
run: $(STAMP)
	$(BIN)/python examples/demo/serve.py

test: lint unit rego

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest-xdist: the suite mostly waits on real processes, so more workers than the 2 cores pay
# (measured: docs/dependencies.md). Tests sharing a fixed path or port carry
# @pytest.mark.host_resource and take turns on a lock (tests/conftest.py). `make unit TEST_WORKERS=0`: serial.
TEST_WORKERS ?= 4

unit: $(STAMP) $(ORACLE_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

rego: $(STAMP)
	$(BIN)/agent-sidecar policy check rego/
	$(BIN)/agent-sidecar policy test rego/

# Tables measured side by side in one run on 2 cores: the hot path, the whole sidecar's memory
# (every process, RSS and PSS, idle and after 20k mixed calls: docs/performance.md), the
# added latency per model API (chat, Responses, embeddings, Anthropic Messages) of the front
# door and of the LiteLLM proxy (the `bench` extra; without it that column says so; ~4 minutes
# with it), then MCP
# tools/call direct vs through the sidecar; the older, narrower
# benchmarks stay runnable on their own (bench/policy_engine.py, relay_overhead.py, ...).
bench: $(STAMP)
	$(BIN)/python bench/hot_path.py
	$(BIN)/python bench/footprint.py
	$(BIN)/python bench/open_loop.py
	$(BIN)/python bench/model_overhead.py --calls 200 --concurrency 16
	$(BIN)/python bench/mcp_overhead.py
	$(BIN)/python bench/a2a_overhead.py
	$(BIN)/python bench/fleet_state.py

# Not part of `make test`: 10 minutes of mixed traffic at 300 calls/s through a pod-mode
# sidecar, judged (memory growth, p99 drift, errors, an audit record per call); writes the table
# and a PNG to soak-out/ (bench/soak.py; docs/observability.md#soak). The `soak` extra is matplotlib.
SOAK_STAMP := $(VENV)/.soak
$(SOAK_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,soak]'
	touch $@

soak: $(SOAK_STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

# kustomize loads nothing outside k8s/: refresh the policy copy the ConfigMap is built from.
k8s-policy:
	cp rego/agentsidecar/authz/authz.rego k8s/base/agents/policy/authz.rego
	cp rego/agentsidecar/authz/mcp.rego k8s/base/agents/policy/mcp.rego
	cp rego/agentsidecar/authz/a2a.rego k8s/base/agents/policy/a2a.rego
	cp rego/agentsidecar/data.json k8s/base/agents/policy/data.json

# What the Dockerfile does: a plain, non-editable `pip install .` into a fresh venv.
install-check:
	rm -rf build/install-check && $(PYTHON_BIN) -m venv build/install-check
	build/install-check/bin/python -m pip install -q --disable-pip-version-check .
	cd /tmp && $(CURDIR)/build/install-check/bin/agent-sidecar --help >/dev/null
	cd /tmp && $(CURDIR)/build/install-check/bin/agent-sidecar policy test $(CURDIR)/rego
	cd /tmp && $(CURDIR)/build/install-check/bin/python -c "from sidecar.state.migrations import \
		migrations as m; n = $$(ls $(CURDIR)/sidecar/state/migrations/sqlite/*.sql | wc -l); \
		assert len(m('sqlite')) == len(m('postgres')) == n > 0, 'migrations not shipped'"
	rm -rf build/install-check

# Build the image daemonless (buildah), then run the sidecar in it and make a call (root;
# Debian's buildah and debootstrap). docs/kubernetes.md#the-image.
image-check: $(STAMP)
	$(BIN)/python tools/image_check.py

clean:
	rm -rf .venv .venv-* build *.egg-info .pytest_cache .ruff_cache
