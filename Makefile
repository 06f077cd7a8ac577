# Quick start: `make demo` and `make test` from a fresh clone (they create .venv themselves).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench docs dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned. PyPI's Linux wheel is a CUDA build: for the CPU build, add
	# TORCH_INDEX=https://download.pytorch.org/whl/cpu (e.g. `make test TORCH_INDEX=...`).
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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

# The release files, checked as PyPI will check them (a release: docs/contributing.md).
dist: $(STAMP)
	$(PY) -m pip install --quiet build twine
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

bench: $(STAMP)
	$(PY) benchmarks/pca_sweep.py

clean:
	rm -rf $(VENV) demo_output docs/_build docs/generated
