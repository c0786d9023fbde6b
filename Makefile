# The two commands a newcomer runs: `make test` and `make demo`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,dali,ray]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check sdfn_bench tests

# Debian's Chromium for the browser test of the report pages (tests/test_gallery_browser.py); installed
# only when missing. Where it cannot be installed (no root, no apt) that test skips and says why.
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: tests/test_gallery_browser.py will skip"

test: $(STAMP) lint browser
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/sdfn-bench demo

bench: $(STAMP)
	$(BIN)/sdfn-bench bench

clean:
	rm -rf $(VENV) build *.egg-info
