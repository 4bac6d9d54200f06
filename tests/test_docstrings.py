"""The docstrings' ``>>>`` examples run and print what they say.

Every module of the package is searched (new modules are found by
``pkgutil``), as ``python -m doctest`` would, with ``jax``, ``jnp``, ``np``,
``optax`` and ``om`` (optax_muon) already imported.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests import _sweeps

MODULES = [om.__name__] + sorted(
    f"{om.__name__}.{info.name}" for info in pkgutil.iter_modules(om.__path__))
ALIASES = list(_sweeps.ALIASES.values())
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(obj) -> int:
  return sum(len(t.examples) for t in doctest.DocTestFinder().find(obj))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  globs = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "om": om}
  runner = doctest.DocTestRunner(optionflags=FLAGS)
  for test in doctest.DocTestFinder().find(module, name, globs=globs):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} " \
      f"examples in {name} failed (output above)"


@pytest.mark.parametrize("alias", ALIASES, ids=lambda f: f.__name__)
def test_every_alias_has_an_example(alias):
  assert _examples(alias) > 0
