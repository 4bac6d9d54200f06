"""optax's common optimizer checks (the pattern of ``optax/contrib/
_common_test.py``), run against every alias.

Each alias must: work under ``optax.inject_hyperparams`` with only its
iteration count static (``ns_steps``, optax's convention; MomMuon's
``whiten_steps``) and give the same updates and state
as without it; accept extra keyword arguments to ``update``; run jitted for
several steps without recompiling, with a state whose structure, shapes and
dtypes never change (also under ``lax.cond``, for float16, bfloat16 and
float32 params); give zeros under ``optax.MultiSteps`` between accumulation
steps; and accept a learning-rate schedule.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests import _sweeps
from tests._sweeps import sweep

# `make test` only (optax's common optimizer checks on every alias);
# `make test-fast` keeps the reference checks of the math.
pytestmark = pytest.mark.slow

# Every alias of the registry at its defaults, and MomMuon's other schedules.
ALIASES = {name: (alias, {}) for name, alias in om.ALIASES.items()} | {
    "mommuon_every1": (om.mommuon, {"ns_every": 1}),
    "mommuon_seed": (om.mommuon, {"ns_average": "preconditioner",
                                  "ns_beta": 0.9, "ns_every": 1,
                                  "ns_rescale": False}),
}
NAMES = sorted(ALIASES)


def _params(dtype=jnp.float32):
  # Two leaves like those of optax's own inject_hyperparams check (a 2-D and
  # a 3-D one, both 2x10 matrices in the wide orientation: one stacked
  # Newton–Schulz program) and a vector: both parts of the multi_transform
  # run.
  return {"a": -jnp.ones((10, 2), dtype),
          "b": jnp.linspace(-1.0, 1.0, 20, dtype=dtype).reshape(2, 5, 2),
          "bias": jnp.ones((3,), dtype)}


def _grads(params, t=0):
  return jax.tree.map(
      lambda p: (jnp.cos(p * (t + 1.0)) + 0.1 * (t + 1)).astype(p.dtype),
      params)


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _layout(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


_TRACES = collections.Counter()


@functools.cache
def _jitted(name):
  """``alias(0.02, **kwargs)`` and its jitted update, shared by the tests
  that run it on the float32 params (one compile per alias).

  The update passes ``update`` a keyword argument no optimizer expects (as
  optax's common tests do: every alias must accept and ignore it).
  ``_TRACES[name]`` counts its traces, i.e. its compiled signatures.
  """
  alias, kwargs = ALIASES[name]
  tx = alias(0.02, **kwargs)

  def update(grads, state, params):
    _TRACES[name] += 1
    return tx.update(grads, state, params,
                     unexpected_extra_args_your_optimizer_doesnt_expect=1)

  return tx, jax.jit(update)


@pytest.mark.parametrize("name", sweep(NAMES))
def test_inject_hyperparams_with_only_ns_steps_static(name):
  alias, kwargs = ALIASES[name]
  tx, update = _jitted(name)  # alias(0.02, **kwargs)
  tx_inject = optax.inject_hyperparams(
      alias, static_args=(_sweeps.steps_arg(alias),))(
      learning_rate=0.02, **kwargs)
  params = _params()
  state = jax.jit(tx.init)(params)
  state_inject = jax.jit(tx_inject.init)(params)
  update_inject = jax.jit(tx_inject.update)
  for t in range(4):  # MomMuon's default ns_every is 5: steps 1 and ... 4
    grads = _grads(params, t)
    updates, state = update(grads, state, params)
    updates_inject, state_inject = update_inject(grads, state_inject, params)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates_inject)]),
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)]),
        rtol=1e-5, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               state_inject.inner_state, state)


def test_injected_ns_every_follows_its_value_without_recompiling():
  """ns_every as a traced hyperparameter: the schedule it gives is the one a
  static ns_every gives, and changing it in the state reuses the
  compiled step."""
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)),
                             jnp.float32)}
  labels = {"w": "muon"}
  tx_inject = optax.inject_hyperparams(om.mommuon,
                                       static_args=("whiten_steps",))(
      learning_rate=0.1, ns_every=3, param_labels=labels)
  compiles = []

  @jax.jit
  def step(grads, state):
    compiles.append(1)
    return tx_inject.update(grads, state, params)

  for every in (3, 2, 0):
    tx = om.mommuon(0.1, ns_every=every, param_labels=labels)
    update = jax.jit(tx.update)  # compiles faster than it runs op by op
    state, state_inject = tx.init(params), tx_inject.init(params)
    state_inject.hyperparams["ns_every"] = jnp.asarray(every)
    for t in range(6):
      grads = _grads(params, t)
      want, state = update(grads, state, params)
      got, state_inject = step(grads, state_inject)
      np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, atol=1e-7,
                                 err_msg=f"ns_every={every} step {t + 1}")
  assert len(compiles) == 1


@pytest.mark.parametrize("name", sweep(NAMES))
def test_accepts_extra_args_and_does_not_recompile(name):
  # The shared update passes the extra argument. The other tests may have
  # compiled it already: the steps after the first must reuse the first
  # one's compiled signature.
  tx, update = _jitted(name)
  params = _params()
  state = tx.init(params)
  layout = _layout(state)
  for t in range(7):
    updates, state = update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
    assert _layout(state) == layout
    if t == 0:
      traces, compiled = _TRACES[name], update._cache_size()
  assert _TRACES[name] == traces and update._cache_size() == compiled
  assert _finite(params) and _finite(state)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32],
                         ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", sweep(["muon", "mommuon", "ogsignmuon"]))
def test_state_is_stable_under_cond(name, dtype):
  """optax's check: both branches of a lax.cond must give the same state
  (so the state's dtypes may not drift with the gradients')."""
  alias, kwargs = ALIASES[name]
  tx = alias(0.02, **kwargs)
  params = _params(dtype)

  @jax.jit
  def step(params, state):
    grads = _grads(params)
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    updates, state = jax.lax.cond(
        cond, lambda: tx.update(grads, state, params),
        lambda: (params, state))
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(2):
    params, state = step(params, state)
    assert all(x.dtype == dtype for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", sweep(NAMES))
def test_multi_steps_gives_zeros_between_accumulations(name):
  alias, kwargs = ALIASES[name]
  tx = optax.MultiSteps(alias(0.02, **kwargs), every_k_schedule=4)
  params = _params(jnp.bfloat16)
  state = jax.jit(tx.init)(params)
  updates, _ = jax.jit(tx.update)(_grads(params), state, params)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
    assert u.dtype == p.dtype
    np.testing.assert_array_equal(np.asarray(u, np.float32), 0.0)


@pytest.mark.parametrize("name", sweep(NAMES))
def test_learning_rate_schedule_equals_constant(name):
  alias, kwargs = ALIASES[name]
  params = _params()
  scheduled = alias(optax.constant_schedule(0.02), **kwargs)
  # Both jitted (faster than op by op); the constant one is the shared
  # alias(0.02, **kwargs).
  runs = [(scheduled, jax.jit(scheduled.update)), _jitted(name)]
  finals = []
  for tx, update in runs:
    p, state = params, tx.init(params)
    for t in range(3):
      updates, state = update(_grads(p, t), state, p)
      p = optax.apply_updates(p, updates)
    finals.append(p)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               *finals)
