# One place for every check. `make test` is what CI runs (.ci/run).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := src tests $(wildcard bench)

.PHONY: demo test check lint typecheck unit bench screenshots clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "Error: $(PY) not found (set PY=...)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/leadscore demo --serve

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

# `make test` = every check: lint, format, types and the whole test suite.
test: lint typecheck unit

check: test

# The README's screenshots, from the browser tests (Chromium at /usr/bin/chromium).
screenshots: $(STAMP)
	LEADSCORE_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/test_ui_browser.py

bench: $(STAMP)
	$(BIN)/python bench/batch.py --quick
	$(BIN)/python bench/ingest.py --quick
	$(BIN)/python bench/ui.py --quick

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
