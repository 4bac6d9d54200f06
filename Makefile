# Two commands on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: test demo lint bench docs clean venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per extra installed into .venv; each is redone when pyproject.toml
# changes. `make docs` alone installs the package and the docs extra only.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

$(DOCS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check optax_muon tests examples benchmarks
	$(PY) -m pytest -q -n 2 tests

demo: $(STAMP)
	$(PY) examples/compare.py --task lm --out results/lm

# API reference from the docstrings: docs/_build/html/index.html
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/step_time.py --out benchmarks/results/step_time.json
	$(PY) benchmarks/orthogonality.py --out benchmarks/results/orthogonality.json
	$(PY) benchmarks/sharding.py --out benchmarks/results/sharding.json

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build
