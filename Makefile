# finetune-operator: every target bootstraps what it needs from a fresh clone.
#   make demo      the main job (examples/quickstart.yaml) on one machine, no cluster
#   make test      every test tier but gpu/ (what CI runs)
#   make tools     build (or reuse) the control-plane binaries; prints their directory last
#   make cluster   start the real control plane in the foreground (prints KUBECONFIG=...)
#   make bench     benchmarks (not part of make test)
# Caches live outside the clone: pip in ~/.cache/pip, Go in ~/go and ~/.cache/go-build, the
# built control plane in $(TOOLS_CACHE).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_CACHE_DIR ?= $(HOME)/.cache/pip
export PIP_CACHE_DIR
export PIP_DISABLE_PIP_VERSION_CHECK := 1
TOOLS_CACHE ?= $(HOME)/.cache/finetune-operator/tools
export TOOLS_CACHE
PYTEST_ARGS ?=

.PHONY: help venv demo test lint typecheck unit test-unit test-trainer test-cluster test-helm \
        test-monitoring tools cluster crd bench clean

help:
	@sed -n '1,10p' Makefile

# The virtual environment, rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	time $(PY) -m pip install -q -e '.[trainer,local,dev]'
	@touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check operator trainer_image tests hack bench
	$(VENV)/bin/ruff format --check operator trainer_image tests hack bench

typecheck: venv
	$(VENV)/bin/mypy operator/finetune_operator

# The CRD is generated from the Python model; tests fail when the two drift.
crd: venv
	$(PY) -m finetune_operator.crdgen --write

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-trainer: venv
	$(PY) -m pytest tests/trainer $(PYTEST_ARGS)

tools:
	@bash hack/build-tools.sh

test-cluster: venv
	@TOOLS_DIR=$$(bash hack/build-tools.sh | tail -n 1) && export TOOLS_DIR && \
	  $(PY) -m pytest tests/cluster $(PYTEST_ARGS)

test-helm: venv
	@TOOLS_DIR=$$(bash hack/build-tools.sh | tail -n 1) && export TOOLS_DIR && \
	  $(PY) -m pytest tests/helm $(PYTEST_ARGS)

test-monitoring: venv
	@bash hack/install-prometheus.sh
	$(PY) -m pytest tests/monitoring $(PYTEST_ARGS)

# Every tier but gpu/. Tools first so that a fresh machine builds them once.
test: venv lint typecheck
	@TOOLS_DIR=$$(bash hack/build-tools.sh | tail -n 1) && export TOOLS_DIR && \
	  bash hack/install-prometheus.sh && \
	  $(PY) -m pytest tests -m "not gpu" --ignore=tests/gpu $(PYTEST_ARGS)

cluster:
	@TOOLS_DIR=$$(bash hack/build-tools.sh | tail -n 1) && export TOOLS_DIR && \
	  $(MAKE) -s venv && exec $(PY) hack/cluster.py

demo: venv
	$(VENV)/bin/finetune run examples/quickstart.yaml --demo

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .work .pytest_cache .mypy_cache .ruff_cache
