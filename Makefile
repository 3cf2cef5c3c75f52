# Two commands for a fresh machine (Python 3.11+ and pip only):
#   make demo   set up, then train the built-in demo model on the CPU (audio -> tensors -> adapter)
#   make test   set up, then run the test suite
# and `make lint` for the static checks (CI runs it before the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test test-fast lint lint-ruff lint-format lint-types lint-imports bench clean

# The checks `make lint` runs (.ci/run's no-make fallback runs the same four).
LINT_CHECKS ?= lint-ruff lint-format lint-types lint-imports

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first, so the packages below do not pull a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/sidestep demo --plain

test: setup
	$(PY) -m pytest -q --durations=30

test-fast: setup
	$(PY) -m pytest -q -m "not integration and not slow"

lint: $(LINT_CHECKS)

lint-ruff: setup
	$(VENV)/bin/ruff check .

lint-format: setup
	$(VENV)/bin/ruff format --check .

lint-types: setup
	$(VENV)/bin/mypy

# import-linter contracts in pyproject.toml: the UI imports only engine's stdlib contract, and layers.
lint-imports: setup
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/ui.py
	$(PY) benchmarks/preprocess.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
