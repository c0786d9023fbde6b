# The two commands a newcomer runs: `make test` and `make demo`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,dali]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check sdfn_bench tests

test: $(STAMP) lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/sdfn-bench demo

bench: $(STAMP)
	$(BIN)/sdfn-bench bench

clean:
	rm -rf $(VENV) build *.egg-info
