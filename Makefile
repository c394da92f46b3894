# slm-operator — developer entry points. `make test` is the one command CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := venv

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VLLM_VENV := .venv-vllm
SHARED ?= $(abspath ../shared)
RUN_DIR ?= $(abspath .run/cluster)
export SLM_RUN_DIR := $(RUN_DIR)

.PHONY: venv binaries cluster-up cluster-down cluster-status test test-unit test-integration \
        vllm-env crds manifests lint demo demo-down clean docker images kind-up kind-down e2e e2e-run

# The project's virtualenv, with the package installed editable and its CLIs on .venv/bin/.
# NB: the stamp depends on pyproject.toml so a dependency change reinstalls.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

# Control-plane binaries, built from Go modules into ~/.cache/slm-operator (see hack/versions.env).
binaries:
	@bash hack/build-binaries.sh >/dev/null

cluster-up: venv binaries
	@$(VPY) hack/cluster.py up --bin "$$(bash hack/build-binaries.sh 2>/dev/null)"

cluster-down: venv
	@$(VPY) hack/cluster.py down

cluster-status: venv
	@$(VPY) hack/cluster.py status || true

# A second virtualenv for the real vLLM engine (CPU build): its torch pin would fight ours.
# Where it cannot install, the vLLM tests skip and print why (hack/vllm-env.sh records the reason).
vllm-env:
	@SHARED="$(SHARED)" bash hack/vllm-env.sh $(VLLM_VENV) || true

crds: venv
	$(VPY) hack/sync_crds.py

manifests: venv binaries
	$(VPY) hack/render_manifests.py --helm "$$(bash hack/build-binaries.sh 2>/dev/null)/helm"

test-unit: venv
	$(VPY) -m pytest tests/unit -q

# The integration suite starts its own control plane (or uses $$KUBECONFIG) through tests/conftest.py.
test-integration: venv binaries vllm-env
	SLM_K8S_BIN="$$(bash hack/build-binaries.sh 2>/dev/null)" $(VPY) -m pytest tests/integration -q

# Each stage prints its time. The Docker engine stage installs and starts one where it can (root,
# Debian); where it cannot, tests/e2e skips saying why, unless SLM_REQUIRE_E2E=1 (.ci/run sets it).
test: venv
	@start=$$SECONDS; $(MAKE) --no-print-directory lint || exit 1; echo "[make test] lint (ruff, mypy, import-linter) took $$((SECONDS-start)) s"
	@start=$$SECONDS; bash hack/build-binaries.sh >/dev/null || exit 1; \
	  echo "[make test] binaries ready after $$((SECONDS-start)) s"
	@start=$$SECONDS; $(MAKE) --no-print-directory vllm-env; echo "[make test] vllm env step took $$((SECONDS-start)) s"
	@start=$$SECONDS; bash hack/docker-engine.sh || echo "[make test] no Docker engine: tests/e2e will say why"; \
	  echo "[make test] docker engine step took $$((SECONDS-start)) s"
	@start=$$SECONDS; SLM_REQUIRE_CLUSTER=1 SLM_K8S_BIN="$$(bash hack/build-binaries.sh 2>/dev/null)" \
	  $(VPY) -m pytest tests -q --ignore=tests/e2e; rc=$$?; \
	  echo "[make test] unit + integration + vLLM tests took $$((SECONDS-start)) s"; exit $$rc
	@start=$$SECONDS; $(MAKE) --no-print-directory e2e-run; rc=$$?; \
	  echo "[make test] end-to-end tests (images, kind, real pods) took $$((SECONDS-start)) s"; exit $$rc

# --- Real pods: a Docker engine, images built here, a kind cluster (docs/kind.md) ---------------
KIND_LOAD := --load slm-local/slm-operator:dev --load slm-local/vllm-cpu-e2e:dev

docker:
	@bash hack/docker-engine.sh

images: docker
	@bash hack/images.sh >/dev/null

kind-up: venv binaries images
	@$(VPY) hack/cluster.py kind-up --bin "$$(bash hack/build-binaries.sh 2>/dev/null)" $(KIND_LOAD)

# Deletes the cluster, kind's network and the Docker engine hack/docker-engine.sh started (not
# one that was running before): nothing it made stays.
kind-down: venv
	@$(VPY) hack/cluster.py kind-down --bin "$$(bash hack/build-binaries.sh --check 2>/dev/null)"
	@bash hack/docker-engine.sh --stop

# The end-to-end suite alone (builds images and the cluster as needed, reuses them after). Its
# tests are one story in order: -x stops at the first broken step instead of waiting out the rest.
e2e: venv binaries docker
	@$(MAKE) --no-print-directory e2e-run SLM_REQUIRE_E2E=1

e2e-run:
	SLM_K8S_BIN="$$(bash hack/build-binaries.sh 2>/dev/null)" $(VPY) -m pytest tests/e2e -x -v -s -rs

# Style, types and layers: ruff on every Python tree, mypy --strict on the package (settings in
# pyproject.toml), import-linter's contracts (.importlinter).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

demo: venv binaries
	@$(VPY) hack/demo.py up --bin "$$(bash hack/build-binaries.sh 2>/dev/null)"

demo-down: venv
	@$(VPY) hack/demo.py down

clean: cluster-down
	rm -rf .run
