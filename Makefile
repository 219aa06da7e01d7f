# adflow — one interface for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Keep the stack's first-use costs and caches inside the project, not the home folder.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.adflow/torch_extensions
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE := 1
export MLFLOW_ENABLE_ASYNC_LOGGING := false
# This machine's pip config lists local index folders that lack most packages; pip warns per package.
QUIET_PIP := grep -v "^WARNING: Location 'file:" || true

ARGS ?=

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (the lock is for CPython 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the locked environment into $(VENV) (first time: a few minutes)"
	# torch first, from the CPU wheel; deepspeed builds against it without an isolated build env
	# (an isolated build would fetch an unpinned CUDA torch). Everything is pinned by constraints.txt.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0 setuptools==84.2.1 wheel ninja==1.13.2 \
	  py-cpuinfo==9.0.0 psutil==7.2.2 numpy==2.4.6 packaging==26.3 2>&1 | { $(QUIET_PIP); }
	$(BIN)/pip install -q -c constraints.txt --no-build-isolation deepspeed==0.19.8 2>&1 | { $(QUIET_PIP); }
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]' 2>&1 | { $(QUIET_PIP); }
	@touch $(STAMP)

setup: $(STAMP) ## create .venv with the locked dependencies (only if missing or stale)

run: setup ## run ads_full end to end on the embedded default (tiny preset); ARGS="--set world.n_users=800"
	$(BIN)/adflow run --preset tiny --placement local $(ARGS)

run-services: setup system-deps ## ads_full against real servers on loopback: MLflow on PostgreSQL, Redis, 2-node Ray
	$(BIN)/adflow services run --preset tiny $(ARGS)

ui: setup ## the web console on http://127.0.0.1:8000 (admin tokens: ARGS="--tokens-file <file>")
	$(BIN)/adflow ui $(ARGS)

SYSTEM_PACKAGES := redis-server postgresql chromium chromium-driver
system-deps: ## Debian packages: redis-server + postgresql (run-services, Feast), chromium + chromium-driver (console)
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "system packages present: $(SYSTEM_PACKAGES)"; exit 0; fi; \
	SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	echo "installing:$$missing"; \
	{ $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; } >/dev/null \
	  || echo "warning: could not install$$missing; the tests that need them skip and say why"

test: setup ## run the test suite (everything that works on a 2-core CPU machine)
	$(BIN)/pytest $(ARGS)

lint: setup ## ruff check + format check; mypy on the core package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: setup ## compile every pipeline to KFP IR YAML under build/pipelines
	$(BIN)/adflow pipeline compile --out build/pipelines $(ARGS)

bench: setup ## benchmarks as ratios vs a same-session baseline (bench/results/)
	$(BIN)/python bench/ctr_bench.py
	$(BIN)/python bench/serving_bench.py
	$(BIN)/python bench/creative_bench.py

loadtest: setup ## bounded load test of the router on loopback (after make run): c=16 and 32, 60 s each
	$(BIN)/python bench/loadtest.py $(ARGS)

lock: setup ## rewrite constraints.txt from the current environment
	{ head -1 constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.tmp && mv constraints.tmp constraints.txt

clean: ## remove local state: runs, MLflow store, KFP outputs, build folder
	rm -rf .adflow runs build test-output

manifests: setup ## render the Kubernetes overlays and jobs (infra/k8s) to build/infra/*.yaml
	@mkdir -p build/infra
	for t in overlays/dev overlays/prod-gpu jobs; do $(BIN)/kubectl kustomize infra/k8s/$$t > build/infra/$$(basename $$t).yaml; done
	@ls build/infra

.PHONY: help setup run run-services ui system-deps test lint fmt compile bench loadtest lock clean manifests
