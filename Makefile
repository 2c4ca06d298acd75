# The README's two commands: `make run` (the demo, end to end) and `make test` (lint + the suite).
# Both create or reuse .venv and install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= all
STAMP := $(VENV)/.installed-$(EXTRAS)
PYTEST_ARGS ?=

.PHONY: run test lint format install bytecode clean prometheus k8s-tools cluster-up cluster-down

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# pip compiles what it installs, but an editable install leaves src/ as source; where
# PYTHONDONTWRITEBYTECODE is set, every process (each pipeline task, each server) would compile modelyard
# again. Compiling here costs a fraction of a second when nothing changed.
bytecode: install
	@$(BIN)/python -m compileall -q src

run: install bytecode
	@bash scripts/demo.sh

lint: install
	$(BIN)/ruff check src tests bench examples scripts
	$(BIN)/ruff format --check src tests bench examples scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint bytecode prometheus k8s-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# The suite uses a real Prometheus, promtool, Alertmanager and amtool (Debian's packages): installed here
# when running as root, otherwise `make test` stops and says how, rather than skipping those tests.
prometheus:
	@{ command -v prometheus && command -v prometheus-alertmanager; } >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  prometheus prometheus-alertmanager >/dev/null; } || { echo "make test needs Prometheus and" \
	  "Alertmanager: run 'apt-get install prometheus prometheus-alertmanager' as root, then make test" \
	  "again" >&2; exit 1; }

# The control plane's programs, built from pinned Go modules into ~/.cache/modelyard/k8s-<version>/bin
# (only what is missing or stale; see scripts/k8s-tools.sh).
k8s-tools:
	@bash scripts/k8s-tools.sh >/dev/null

# A control plane for a person: etcd, the API server, controllers, scheduler, kwok's nodes, the upstream
# CRDs and KServe's controller, with state and logs in .modelyard/cluster.
cluster-up: k8s-tools
	@$(PYTHON) scripts/cluster.py up >/dev/null
	@echo "control plane up; logs in .modelyard/cluster/logs. Point kubectl at it with:"
	@echo "  export KUBECONFIG=$(CURDIR)/.modelyard/cluster/kubeconfig PATH=$$(bash scripts/k8s-tools.sh --bin-dir):\$$PATH"

cluster-down:
	@$(PYTHON) scripts/cluster.py down

format: install
	$(BIN)/ruff check --fix src tests bench examples scripts
	$(BIN)/ruff format src tests bench examples scripts

clean:
	rm -rf $(VENV) .modelyard .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

# ---------------------------------------------------------------- Kubernetes: the chart, manifests/, kind
.PHONY: manifests chart-docs kind-up

# manifests/ and the chart README's values table are rendered from charts/modelyard; tests fail when stale.
manifests: install
	$(BIN)/python -c 'from modelyard.deploy.chart import write_manifests; write_manifests()'

chart-docs: install
	$(BIN)/python -c 'from modelyard.deploy.chart import write_readme_values_table; write_readme_values_table()'

# A kind cluster with cert-manager, KServe (Standard mode), both images and the chart (needs docker and kind).
kind-up:
	bash scripts/kind-up.sh
