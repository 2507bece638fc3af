# cbmir: `make run` installs and runs the default cell; `make test` installs and runs the offline test suite;
# `make test-fast` skips the tests marked slow; `make lint` checks style (ruff).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# FAISS build: cpu (default) or gpu (pip extra `gpu`); exactly one is installed.
FAISS ?= cpu
ARGS ?=
PYTEST_ARGS ?=
# The suite runs in two pytest-xdist workers, each with one torch/OpenMP thread (2 cores: 2 workers, no
# oversubscription); tests are handed out one at a time and idle workers steal queued ones. WORKERS=0: one process.
WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS) --dist worksteal,)

.PHONY: install run test test-fast lint bench bench-compare report clean browser-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e '.[$(FAISS),dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/cbmir run $(ARGS)

# Offline by construction: no test may need the network.
test: install browser-deps
	HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The suite without the tests marked slow (subprocess command lines, torchrun, real weights, full-size networks).
test-fast: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# ruff, as configured in pyproject.toml: lint rules, then formatting (checked, never rewritten here).
lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

# Tables, figures and the comparison with the paper, from every result under outputs/ (ARGS: folders, --out, --wandb).
report: install
	HF_HUB_OFFLINE=1 $(BIN)/cbmir report $(ARGS)

# Throughput, efficiency, baselines, 3D, search, cache, memory and the search service on this machine, in paired
# rounds with 95 % intervals (budgeted for ~15 min on 2 CPU cores, ARGS=--quick ~3 min; longer on a busy machine).
bench: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/cbmir bench $(ARGS)

# The working tree's quick bench against a saved baseline (make it on the base commit with
# `make bench ARGS="--quick --out outputs/bench/baseline.json"`); exits 1 naming any figure that got worse.
BASELINE ?= outputs/bench/baseline.json
bench-compare: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/cbmir bench --quick --out outputs/bench/current.json $(ARGS)
	$(BIN)/cbmir bench compare $(BASELINE) outputs/bench/current.json --fail-on-regression

# The headless browser of tests/test_browser.py: Debian's chromium, installed (apt-get) only when missing.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

clean:
	rm -rf $(VENV) .pytest_cache
