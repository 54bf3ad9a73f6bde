# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   sync all five CRM resources from the bundled simulator into data/warehouse.duckdb
#   make test   lint, then the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/crm-demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	scripts/ensure-chromium
	$(VENV)/bin/pytest
