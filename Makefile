# Two commands for a fresh machine (Python 3.11+ and pip only):
#   make demo   set up, then train the built-in demo model on the CPU (audio -> tensors -> adapter)
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test test-fast bench clean

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
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not integration and not slow"

bench: setup
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/ui.py
	$(PY) benchmarks/preprocess.py

clean:
	rm -rf $(VENV) .pytest_cache
