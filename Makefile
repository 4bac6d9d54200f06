# Two commands on a fresh machine: `make test` and `make demo`.
comma := ,
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

FLOOR_VENV := .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed
FLOOR_CONSTRAINTS := .ci/floor-constraints.txt

# The newest JAX tested (JAX 0.11 and later need Python >= 3.12).
NEWEST_PYTHON ?= python3.12
NEWEST_VENV := .venv-newest
NEWEST_STAMP := $(NEWEST_VENV)/.installed
NEWEST_CONSTRAINTS := .ci/newest-constraints.txt

.PHONY: test test-fast test-integration test-floor test-newest demo lint bench docs clean venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per extra installed into .venv; each is redone when pyproject.toml
# changes. `make docs` alone installs the package and the docs extra only.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,models]"
	touch $(STAMP)

$(DOCS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

venv: $(STAMP)

# Everything but the `integration` tier, the slow subprocess / example /
# compare tests included (under 5 minutes on 2 cores).
test: $(STAMP)
	$(VENV)/bin/ruff check optax_muon tests examples benchmarks
	$(PY) -m pytest -q -n 2 -m "not integration" tests

# The long end-to-end runs marked @pytest.mark.integration (CI runs them);
# pytest's exit 5 (no test selected) is not a failure here.
test-integration: $(STAMP)
	$(PY) -m pytest -q -n 2 -m integration tests || [ $$? -eq 5 ]

# The suite (less the slow multi-process tests) on the lowest declared
# versions of jax, jaxlib, optax, chex and flax, in a second venv.
# A venv with the package's test extras at pinned versions:
# $(call pinned_venv,VENV,PYTHON,CONSTRAINTS,EXTRAS).
define pinned_venv
	$(2) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q -c $(3) -e ".[$(4)]"
	touch $(1)/.installed
endef

$(FLOOR_STAMP): pyproject.toml $(FLOOR_CONSTRAINTS)
	$(call pinned_venv,$(FLOOR_VENV),$(PYTHON),$(FLOOR_CONSTRAINTS),test)

test-floor: $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/python -c "import jax, optax, chex, flax; \
	  print('floor:', 'jax', jax.__version__, 'optax', optax.__version__, \
	        'chex', chex.__version__, 'flax', flax.__version__)"
	$(FLOOR_VENV)/bin/python -m pytest -q -n 2 -m "not slow and not integration" tests

# The whole suite on the newest JAX tested (.ci/newest-constraints.txt), in a
# third venv built with NEWEST_PYTHON (Python >= 3.12).
$(NEWEST_STAMP): pyproject.toml $(NEWEST_CONSTRAINTS)
	$(call pinned_venv,$(NEWEST_VENV),$(NEWEST_PYTHON),$(NEWEST_CONSTRAINTS),test$(comma)models)

test-newest: $(NEWEST_STAMP)
	$(NEWEST_VENV)/bin/python -c "import sys, jax, optax, chex, flax; \
	  print('newest: python', sys.version.split()[0], 'jax', jax.__version__, \
	        'optax', optax.__version__, 'chex', chex.__version__, \
	        'flax', flax.__version__)"
	$(NEWEST_VENV)/bin/python -m pytest -q -n 2 -m "not integration" tests

# For development: all but the tests marked @pytest.mark.slow (under 60 s).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check optax_muon tests examples benchmarks
	$(PY) -m pytest -q -n 2 -m "not slow and not integration" tests

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
	rm -rf $(VENV) $(FLOOR_VENV) $(NEWEST_VENV) results .pytest_cache docs/_build
