"""The model zoo of tests/_models.py on its own (no optimizer): every case
builds, its ``expected`` covers exactly the array leaves of its params and
is consistent with their shapes, its forward and loss trace, and its loss is
finite."""

import jax
import numpy as np
import pytest

from optax_muon import _matrix
from tests import _models

NAMES = sorted(_models.CASES)


def _leaves(params):
  return {_matrix.path_str(p): x
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_every_case_names_its_library():
  assert set(_models.REQUIRES) == set(_models.CASES)


def _check_coverage(case):
  leaves = _leaves(case.params)
  assert len(leaves) == len(jax.tree.leaves(case.params)), "duplicate paths"
  assert set(leaves) == set(case.expected)
  for key, x in leaves.items():
    assert isinstance(x, jax.Array), (key, type(x))
  assert case.source
  assert set(case.names_default) <= set(case.expected)


def _check_shapes(case):
  for key, x in _leaves(case.params).items():
    exp = case.expected[key]
    assert exp.label in ("muon", "adamw"), key
    if exp.label == "adamw":
      assert exp.fan_in == exp.fan_out == (), key
      continue
    axes = exp.fan_in + exp.fan_out
    assert exp.fan_in and exp.fan_out, key
    assert len(set(axes)) == len(axes), f"{key}: fan-in and fan-out overlap"
    assert all(0 <= a < x.ndim for a in axes), (key, x.shape, exp)
    assert len(exp.batch_axes(x.ndim)) == x.ndim - len(axes)


def _check_traces(case):
  """Abstractly: no compilation. The gradient has the params' tree."""
  out = jax.eval_shape(case.forward, case.params, *case.args)
  assert all(np.issubdtype(o.dtype, np.floating) for o in jax.tree.leaves(out))
  grads = jax.eval_shape(jax.grad(case.loss), case.params)
  assert jax.tree.structure(grads) == jax.tree.structure(case.params)
  for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(case.params)):
    assert (g.shape, g.dtype) == (p.shape, p.dtype)


def _check_loss(case):
  # XLA's cheapest optimisation level: the program runs once.
  compiled = jax.jit(case.loss).lower(case.params).compile(
      {"xla_backend_optimization_level": 0,
       "xla_llvm_disable_expensive_passes": True})
  loss = float(compiled(case.params))
  assert np.isfinite(loss) and loss > 0


@pytest.mark.parametrize("name", NAMES)
def test_case(name):
  """One test per case (one build, on one xdist worker): ``expected``
  covers exactly the array leaves and fits their shapes; forward and the
  gradient trace."""
  case = _models.CASES[name]()
  assert case.name == name
  _check_coverage(case)
  _check_shapes(case)
  _check_traces(case)


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_case_loss_is_finite(name):
  """The loss, run once, is finite and positive (in ``make test`` the
  layout tests train one case; this runs every one)."""
  _check_loss(_models.CASES[name]())
