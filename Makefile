# ProgNetwork: `make dev` starts everything on this machine, `make test` runs the whole suite.
# Both create .venv on first use and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.prognet-installed

.PHONY: dev test bench venv clean-data help

help:
	@echo "make dev     start Temporal (+UI), PostgreSQL, Redis, SMTP sink, worker and API (Ctrl-C stops all)"
	@echo "make test    run the whole test suite"
	@echo "make bench   run the benchmark"

dev: $(STAMP)
	$(BIN)/prognet dev

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/prognet bench

venv: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than 3.11; run with PYTHON=python3.11 (or newer)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	@touch $(STAMP)

clean-data:
	rm -rf .prognet
