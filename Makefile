# dora_rl — set-up and the everyday commands. Every target installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo lint test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # CPU build first, or pip fetches a CUDA build
	$(PY) -m pip install -q -e '.[test,tb]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dora demo

lint: $(STAMP)
	$(VENV)/bin/ruff check dora_rl tests bench

test: lint
	$(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
