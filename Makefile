# Set-up and entry points. `make demo` and `make test` each create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/microcae: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/microcae

demo: setup
	$(BIN)/microcae demo --out microcae-demo

lint: setup
	$(BIN)/ruff check src tests benchmarks

test: setup lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/saliency.py

clean:
	rm -rf $(VENV) microcae-demo .pytest_cache .ruff_cache
