# The Makefile is the contract: every task a developer, SRE or CI runs starts here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lock proto proto-check lint fmt test test-fast run demo trace bench helm-check prometheus-tools image check clean

setup: $(STAMP)

# Every machine, CI and the image install the versions the locks pin, each file checked against its hash:
# requirements.lock (runtime + dev + the build backend, what the venv gets), requirements-runtime.lock (the
# image) and requirements-build.lock (the build backend alone, for the image's builder). `make lock` writes them.
LOCKS := requirements.lock requirements-runtime.lock requirements-build.lock

# Reinstall when the locks change (pyproject.toml too: `pip check` then says if the lock misses what it asks).
# finmesh itself goes in without dependencies and with the locked hatchling, so nothing unpinned gets in.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check || { echo "requirements.lock does not satisfy pyproject.toml: run 'make lock'" >&2; exit 1; }
	touch $(STAMP)

# uv alone, at the locked version and hash: `make lock` must work when pyproject.toml no longer fits the lock.
$(BIN)/uv:
	test -x $(PY) || python3 -m venv $(VENV)
	awk '/^uv==/ {found = 1} found && /^ *#/ {exit} found' requirements.lock > $(VENV)/uv.requirements
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(VENV)/uv.requirements

# Re-resolve the locks from pyproject.toml, keeping every pin that still fits; `make lock UPGRADE=pkg` (or
# UPGRADE="pkg1 pkg2") bumps those to their newest allowed versions, `make lock UPGRADE=all` bumps everything.
# The runtime and build locks are constrained by requirements.lock, so the image runs the versions tested.
LOCK_FLAGS := --quiet --generate-hashes --universal --python-version 3.11 --custom-compile-command "make lock"
# The build backend pyproject.toml names, and pip: locked with the rest (fed to uv on stdin).
BUILD_REQUIRES := $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], "pip", sep="\n")'
lock: $(BIN)/uv
	$(BUILD_REQUIRES) | $(BIN)/uv pip compile $(LOCK_FLAGS) \
	  $(if $(filter all,$(UPGRADE)),--upgrade,$(foreach pkg,$(UPGRADE),--upgrade-package $(pkg))) \
	  --extra dev pyproject.toml - -o requirements.lock
	$(BIN)/uv pip compile $(LOCK_FLAGS) -c requirements.lock pyproject.toml -o requirements-runtime.lock
	$(BUILD_REQUIRES) | $(BIN)/uv pip compile $(LOCK_FLAGS) -c requirements.lock - -o requirements-build.lock

proto: setup
	PY=$(PY) tools/gen_protos.sh

# Generated code must match the protos: regenerate into a scratch folder and compare.
proto-check: setup
	@tmp=$$(mktemp -d) && PY=$(PY) tools/gen_protos.sh $$tmp >/dev/null && \
	  if diff -r -q $$tmp/finmesh libs/contracts/finmesh; then echo "generated code is up to date"; \
	  else echo "generated code is stale: run 'make proto' and commit"; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp

# buf breaking: the contracts stay wire-compatible with the last release's (deploy/RELEASED, a commit of this
# repository's history, so a full clone or a worktree has it).
# Every gate is proven able to fail by tests/unit/test_lint_gates.py.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint
	released=$$(grep -Eom1 '^[0-9a-f]{40}' deploy/RELEASED) && $(BIN)/buf breaking --against ".git#ref=$$released"

# Formats the tree and sorts imports: what `make lint` checks.
fmt: setup
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

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

# promtool (rule checks and rule unit tests in tests/slo) and prometheus (the end-to-end scrape test), from
# Debian's prometheus package; nothing when both are on PATH already.
prometheus-tools:
	tools/prometheus_tools.sh

# clients/node: `npm ci` of its package-lock.json and the TypeScript contracts (buf.gen.ts.yaml) in
# clients/node/gen, for the Node contract test (tests/integration/test_node_client.py); needs node 20+ and npm.
.PHONY: node-client
node-client: setup
	tools/node_client.sh

# Only where a container engine exists (not on these machines).
image:
	docker build -f deploy/docker/Dockerfile --build-arg SERVICE=$(SERVICE) --build-arg VERSION=$(VERSION) \
	  -t finmesh/$(SERVICE):$(VERSION) .

check: proto-check lint test

clean:
	rm -rf .finmesh .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
