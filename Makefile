# The Makefile is the contract: every task a developer, SRE or CI runs starts here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup proto proto-check lint test test-fast run demo trace bench helm-check image check clean

setup: $(STAMP)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

proto: setup
	PY=$(PY) tools/gen_protos.sh

# Generated code must match the protos: regenerate into a scratch folder and compare.
proto-check: setup
	@tmp=$$(mktemp -d) && PY=$(PY) tools/gen_protos.sh $$tmp >/dev/null && \
	  if diff -r -q $$tmp/finmesh libs/contracts/finmesh; then echo "generated code is up to date"; \
	  else echo "generated code is stale: run 'make proto' and commit"; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp

lint: setup
	$(BIN)/buf lint
	$(BIN)/ruff check .

test: setup
	$(BIN)/pytest

# Without the multi-process end-to-end tests.
test-fast: setup
	$(BIN)/pytest -m "not e2e"

run: setup
	$(BIN)/finmesh up

demo: setup
	$(BIN)/finmesh demo

trace: setup
	$(BIN)/finmesh trace

bench: setup
	$(PY) -m bench.run

# helm lint/template of every value set, Kubernetes schemas, values schema, Dockerfile (hadolint).
helm-check: setup
	tools/helm_tools.sh >/dev/null
	$(BIN)/pytest tests/deploy -q

# Only where a container engine exists (not on these machines).
image:
	docker build -f deploy/docker/Dockerfile --build-arg SERVICE=$(SERVICE) --build-arg VERSION=$(VERSION) \
	  -t finmesh/$(SERVICE):$(VERSION) .

check: proto-check lint test

clean:
	rm -rf .finmesh .pytest_cache .ruff_cache
