# Quick start: `make demo` and `make test` from a fresh clone (they create .venv themselves).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pin the CPU build of torch first, so the project's `torch` requirement pulls no CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sc_noise2self._demo --out demo_output

# One worker per core, each on one thread (tests/conftest.py); the notebooks first, as the longest;
# a notebook cell may take up to 30 minutes on a busy machine.
PYTEST := $(PY) -m pytest -n auto --dist worksteal --nbmake --nbmake-timeout=1800

test: $(STAMP)
	$(PYTEST) notebooks tests

test-all: $(STAMP)
	$(PYTEST) -m "" notebooks tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sc_noise2self tests benchmarks docs
	$(VENV)/bin/ruff format --check sc_noise2self tests benchmarks docs

docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

bench: $(STAMP)
	$(PY) benchmarks/pca_sweep.py

clean:
	rm -rf $(VENV) demo_output docs/_build docs/generated
