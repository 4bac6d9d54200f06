# Two commands on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

FLOOR_VENV := .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed
FLOOR_CONSTRAINTS := .ci/floor-constraints.txt

.PHONY: test test-fast test-floor demo lint bench docs clean venv

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

# Everything, the slow subprocess / example / compare tests included.
test: $(STAMP)
	$(VENV)/bin/ruff check optax_muon tests examples benchmarks
	$(PY) -m pytest -q -n 2 tests

# The suite (less the slow multi-process tests) on the lowest declared
# versions of jax, jaxlib, optax, chex and flax, in a second venv.
$(FLOOR_STAMP): pyproject.toml $(FLOOR_CONSTRAINTS)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q -c $(FLOOR_CONSTRAINTS) -e ".[test]"
	touch $(FLOOR_STAMP)

test-floor: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/python -c "import jax, optax, chex, flax; \
	  print('floor:', 'jax', jax.__version__, 'optax', optax.__version__, \
	        'chex', chex.__version__, 'flax', flax.__version__)"
	$(FLOOR_VENV)/bin/python -m pytest -q -n 2 -m "not slow" tests

# For development: all but the tests marked @pytest.mark.slow (under 60 s).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check optax_muon tests examples benchmarks
	$(PY) -m pytest -q -n 2 -m "not slow" tests

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
	rm -rf $(VENV) $(FLOOR_VENV) results .pytest_cache docs/_build
