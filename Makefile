# `make run`: the default grid end to end; `make test`: the test suite. Both set up .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: run test lint dry-run bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls when pyproject.toml changes. torch is pinned (==2.13.0) in pyproject.toml.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES)
	@echo
	@echo "Results: open file://$(CURDIR)/results/index.html"

dry-run: $(VENV)/.installed
	$(BIN)/snakemake -n --quiet rules

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# Benchmarks print ratios measured in one run on this machine (see bench/*.py).
bench: $(VENV)/.installed
	$(BIN)/python bench/train_loop.py

lint: $(VENV)/.installed
	$(BIN)/ruff check src scripts tests bench
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
