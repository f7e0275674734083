# recozoo: `make train` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Shared 2-core machines: spinning OpenMP threads slow torch 10x under contention; a short spin
# (GNU OpenMP's 1,000 rounds) before sleeping keeps tiny parallel regions fast (recozoo.runtime).
export OMP_WAIT_POLICY ?= PASSIVE
export GOMP_SPINCOUNT ?= 1000
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install train test test-full sweep bench panel panel-check format lint clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv if needed and install recozoo with torch 2.13.0 (CPU)

train: $(STAMP) ## train the default model on the embedded shop data; prints the metrics, the run folder and the next commands
	$(PY) train.py $(ARGS)

test: $(STAMP) ## the fast test suite (no slow tests)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-full: $(STAMP) ## every test, the slow ones too
	$(PY) -m pytest -q $(ARGS)

sweep: $(STAMP) ## the whole zoo on the shop data, then fusion and the leaderboard
	$(PY) train.py -m experiment=zoo $(ARGS)

bench: $(STAMP) ## speed and quality benchmarks into bench/results.{md,json} (RecBole: ARGS="shared=<folder>" or RECOZOO_SHARED)
	$(PY) -m bench $(ARGS)

panel: $(STAMP) ## every model x dataset x seed with defaults, resumable (writes bench/panel.md)
	$(PY) -m bench.panel $(ARGS)

panel-check: $(STAMP) ## run recorded panel cells again here and compare with bench/panel_runs.json
	$(PY) -m bench.panel_check $(ARGS)

format: $(STAMP) ## format and lint with ruff
	$(VENV)/bin/ruff format src tests train.py
	$(VENV)/bin/ruff check --fix src tests train.py bench

lint: $(STAMP) ## ruff's checks (pinned version), no changes made
	$(VENV)/bin/ruff check src tests train.py bench

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf logs outputs multirun wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
