# make demo: the whole platform on the embedded defaults (SQLite queue, local MLflow store,
#            offline synthetic corpus). make test: the test suite.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: install test test-fast demo clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip setuptools wheel
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PYTHON) -m pytest

test-fast: $(VENV)/.installed
	$(PYTHON) -m pytest -m "not slow"

demo: $(VENV)/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

clean:
	rm -rf experiments data/synth queue/expctl.db* mlflow.db mlruns mlartifacts
