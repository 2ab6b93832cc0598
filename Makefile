# Set-up and entry points. `make demo` and `make test` each create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint bench report clean

$(BIN)/microcae: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/microcae

demo: setup
	$(BIN)/microcae demo --out microcae-demo

# ruff (style, docstrings, type hints) and import-linter (the layers contract in pyproject.toml).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

# Every test, the slow-marked ones included (what CI runs), listing the 15 slowest; a plain
# `pytest` (and `make test-fast`) leaves out the tests marked slow.
test: setup lint
	$(BIN)/pytest -q -m "slow or not slow" --durations=15

test-fast: setup lint
	$(BIN)/pytest -q --durations=15

# The reproduction report (docs/REPRODUCTION.md and the README's verdict table) from the shared
# micrographs beside the repo, with the stored study-like models and owner-budget attack run
# (benchmarks/train_steel.py and benchmarks/attack_decoder.py; hours on a CPU, not rerun here).
SHARED ?= ../shared/micrographs
REPORT_GROUPS := aisi1045_decarb_optical nist_lowcarbon_steel_optical zr_hydride_optical ni_superalloy_sem
report: setup
	$(BIN)/microcae report $(addprefix $(SHARED)/,$(REPORT_GROUPS)) \
		--study-like aisi1045_decarb_optical --study-like nist_lowcarbon_steel_optical \
		--steel-models benchmarks/results/steel \
		--attack-run benchmarks/results/attack/attack_steel.json --readme README.md --out docs

bench: setup
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/saliency.py

clean:
	rm -rf $(VENV) microcae-demo .pytest_cache .ruff_cache
