# Two commands on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FLOOR_VENV := .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed
FLOOR_CONSTRAINTS := .ci/floor-constraints.txt

.PHONY: test test-floor demo lint bench clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

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

demo: $(STAMP)
	$(PY) examples/compare.py --task lm --out results/lm

bench: $(STAMP)
	$(PY) benchmarks/step_time.py --out benchmarks/results/step_time.json
	$(PY) benchmarks/orthogonality.py --out benchmarks/results/orthogonality.json
	$(PY) benchmarks/sharding.py --out benchmarks/results/sharding.json

clean:
	rm -rf $(VENV) $(FLOOR_VENV) results .pytest_cache
