# `make run`: the default grid end to end; `make test`: the test suite. Both set up .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: run reproduce test lint dry-run bench bench-gpu report chromium fashion-mnist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls when pyproject.toml changes. torch is pinned (==2.13.0) in pyproject.toml.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed fashion-mnist
	$(BIN)/snakemake --cores $(CORES)
	@echo
	@echo "Results: open file://$(CURDIR)/results/index.html"

# The CPU-feasible part of the paper at its sizes (config/reproduce.yaml), in its own working
# directory reproduce/ so that it and `make run` never touch each other's results.
reproduce: $(VENV)/.installed fashion-mnist
	$(BIN)/snakemake --snakefile $(CURDIR)/Snakefile --directory $(CURDIR)/reproduce \
	  --configfile $(CURDIR)/config/reproduce.yaml --cores $(CORES)
	@echo
	@echo "Comparison: $(CURDIR)/reproduce/results/reproduction/comparison.csv"
	@echo "Reproduction report: open file://$(CURDIR)/reproduce/results/reports/reproduction.html"

# A self-contained Snakemake report (every figure and report, with captions) after `make run`.
report: $(VENV)/.installed
	$(BIN)/snakemake --report results/report.zip
	@echo "Report: $(CURDIR)/results/report.zip"

dry-run: $(VENV)/.installed
	$(BIN)/snakemake -n --quiet rules

# Headless Chromium for tests/test_browser.py: Debian's package, installed when we can (root
# with apt); otherwise that test is skipped with the reason.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
	       || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } \
	  || echo "chromium not installed (needs root and apt): the browser test will be skipped"; }

# Fashion-MNIST for the default grid: Debian's dataset-fashion-mnist (the four IDX files under
# /usr/share/datasets/fashion-mnist), installed when we can (root or passwordless sudo, apt).
# Otherwise the default run leaves its Fashion-MNIST cells out with one warning.
FMNIST := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@[ -d $(FMNIST) ] || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else SUDO=none; fi; \
	  [ "$$SUDO" != none ] && command -v apt-get >/dev/null \
	  && { DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	       || { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; } \
	  || echo "dataset-fashion-mnist not installed (needs root or sudo, and apt): the default run leaves Fashion-MNIST out"; }

test: $(VENV)/.installed chromium fashion-mnist
	$(BIN)/python -m pytest

# Benchmarks print ratios measured in one run on this machine (see bench/*.py): tables, then one
# merged JSON object. faiss-cpu (the neighbours reference) comes from the `bench` extra.
bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run_all.py

# The GPU check (bench/gpu.py, under 5 minutes): needs only torch and numpy besides the library,
# so it runs with .venv's python where there is one, else with $(PYTHON) (a GPU machine's torch).
# Without CUDA it runs at CPU sizes; ARGS go to the script (e.g. ARGS="--size tiny").
bench-gpu:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bench/gpu.py $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src scripts tests bench
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
