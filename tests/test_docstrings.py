"""The docstrings' ``>>>`` examples run and print what they say, and the API
reference lists the aliases of the registry.

Every module of the package is searched (new modules are found by
``pkgutil``), as ``python -m doctest`` would, with ``jax``, ``jnp``, ``np``,
``optax`` and ``om`` (optax_muon) already imported.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re

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
API_MD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "docs", "api.md")
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


def _optimizers_section() -> str:
  """The "## Optimizers" section of docs/api.md (up to the next heading)."""
  with open(API_MD, encoding="utf-8") as f:
    text = f.read()
  match = re.search(r"^## Optimizers\n(.*?)(?=^## )", text, re.M | re.S)
  assert match, "docs/api.md has no '## Optimizers' section"
  return match.group(1)


def test_api_reference_lists_the_registry():
  """The Optimizers section's first autosummary and its ``autofunction``
  entries of aliases are om.ALIASES, in its order: an alias added to the
  registry and not to the reference (or the reverse) breaks this."""
  section = _optimizers_section()
  summary = re.search(r"\.\. autosummary::\n(?:   :\S+:\n)*\n((?:   \S+\n)+)",
                      section)
  assert summary, "no autosummary in docs/api.md's Optimizers section"
  assert summary.group(1).split() == list(om.ALIASES)
  documented = re.findall(r"^\.\. autofunction:: (\S+)$", section, re.M)
  assert [n for n in documented if n != "static_args"] == list(om.ALIASES)
  assert re.search(r"^\.\. autodata:: ALIASES$", section, re.M)
