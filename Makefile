# Two commands on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo lint bench clean venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# Everything, the slow subprocess / example / compare tests included.
test: $(STAMP)
	$(VENV)/bin/ruff check optax_muon tests examples benchmarks
	$(PY) -m pytest -q -n 2 tests

# For development: all but the tests marked @pytest.mark.slow (under 60 s).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check optax_muon tests examples benchmarks
	$(PY) -m pytest -q -n 2 -m "not slow" tests

demo: $(STAMP)
	$(PY) examples/compare.py --task lm --out results/lm

bench: $(STAMP)
	$(PY) benchmarks/step_time.py --out benchmarks/results/step_time.json
	$(PY) benchmarks/orthogonality.py --out benchmarks/results/orthogonality.json
	$(PY) benchmarks/sharding.py --out benchmarks/results/sharding.json

clean:
	rm -rf $(VENV) results .pytest_cache
