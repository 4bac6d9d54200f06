"""Faults a long run meets: leaves without gradient for a while, NaN
debugging, donated buffers.

Leaves whose gradient is zero for N steps and then not: the experts of a
mixture that got no tokens, layers frozen for a while (a gradient mask) and
unfrozen. Every alias (tests/_sweeps.py ``ALIASES``) must keep its state
finite through them, and where the math says so its first nonzero step
must equal a fresh start's. What the math says, per alias, from
docs/ALGORITHMS.md, for a leaf whose gradient is zero at steps 1..N
(weight decay 0, the aliases' default; a constant learning rate):

* Muon chain, the momentum: ``buf = beta buf + (1 - beta) g`` stays 0, so
  at step N + 1 the momentum ``M`` is a fresh run's first ``M``.
* ``muon``, ``ogsignmuon``: the update is a function of ``M`` alone, so the
  first nonzero update equals a fresh start's step 1.
* ``normuon``: its per-neuron ``v`` is an EMA of ``mean(O^2)`` with ``O =
  orthogonalize(0) = 0``: ``v`` stays 0, and with no bias correction the
  first nonzero update equals a fresh start's.
* ``mommuon``: a zero momentum leaves ``P`` and ``Ybar`` as they are and the
  first nonzero momentum is the first refresh (``Ybar = Y``, ``P =
  inv_sqrt(Y)``), on or off the ``ns_every`` schedule: equal to a fresh
  start's step 1. (Its later refreshes follow the global step count, so
  later steps differ from the fresh run's.)
* ``adamuon``: ``v`` stays 0, then ``v = (1 - beta2) n^2``, but the bias
  correction divides by ``1 - beta2^(N+1)`` with the global count: the
  first nonzero update is ``sqrt((1 - beta2^(N+1)) / (1 - beta2))`` times a
  fresh start's (``beta2 = 0.995``: 1.73x after N = 2), not equal.
* ``muonh``, ``normuonh`` (Hyperball after Muon's / NorMuon's direction,
  when they are in ALIASES): a zero direction leaves ``W`` exactly
  unchanged, so at step N + 1 the weight is ``W_0`` and the direction a
  fresh start's: the first nonzero update equals a fresh start's.
* AdamW part (every alias; vectors, embeddings): ``m`` and ``v`` stay 0 and
  the update ``m_hat / (sqrt(v_hat) + eps)`` is exactly 0; at step N + 1 the
  bias corrections use ``t = N + 1``: Adam's step with count ``N + 1`` from
  zero moments (tests/reference.py ``adamw_step``), not a fresh start's.

A leaf frozen after training (nonzero, then zero for N steps) keeps its
momentum ``beta^N`` times what it was: no fresh start, but finite and
exactly decayed.
"""

from __future__ import annotations

import inspect
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import reference
from tests._sweeps import ALIASES, FAST
from tests._tolerances import tol

N_ZERO = 2


def _aliases():
  """Every alias: the FAST ones (Muon, MomMuon) in `make test`, the others
  (a few seconds each, mostly compilation) in `make test-integration`."""
  return [pytest.param(n, id=n, marks=() if n in FAST
                       else pytest.mark.integration) for n in ALIASES]

LR, ADAMW_LR = 0.02, 3e-4

# The first nonzero update of a leaf that had zero gradients at steps
# 1..n, divided by a fresh start's first update (see the module docstring):
# alias -> n -> factor.
FRESH_START = {
    "muon": lambda n: 1.0,
    "ogsignmuon": lambda n: 1.0,
    "normuon": lambda n: 1.0,
    "mommuon": lambda n: 1.0,
    "adamuon": lambda n: math.sqrt((1 - 0.995 ** (n + 1)) / (1 - 0.995)),
    "muonh": lambda n: 1.0,
    "normuonh": lambda n: 1.0,
}

# "dead" gets zero gradients (a matrix, Muon; a vector, AdamW); "live" leaves
# of the same shapes keep training, so that the dead matrix is stacked with a
# live one in one batched Newton–Schulz call.
SHAPES = {"dead": (8, 16), "live": (8, 16), "dead_b": (16,), "live_b": (16,),
          "expert": (3, 8, 16)}
DEAD = ("dead", "dead_b")


def _params():
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(0.1 * rng.standard_normal(s), jnp.float32)
          for k, s in SHAPES.items()}


def _grads(t, dead=()):
  """Step ``t``'s gradients, zero on the leaves in ``dead`` and, for the
  expert stack, on the experts that got no tokens (expert 1 at even
  steps)."""
  rng = np.random.default_rng(100 + t)
  g = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  for k in dead:
    g[k] = np.zeros_like(g[k])
  if t % 2 == 0:
    g["expert"][1] = 0.0
  return {k: jnp.asarray(v) for k, v in g.items()}


def _tx(name):
  # Expert stacks: axis 0 indexes separate matrices.
  return ALIASES[name](LR, adamw_learning_rate=ADAMW_LR,
                       batch_axes=lambda path, leaf: (0,) if leaf.ndim == 3
                       else ())


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


def _stepper(tx, **jit_kwargs):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates
  return jax.jit(step, **jit_kwargs)


def _muon_momentum(state):
  """The Muon chain's momentum tree of an alias's state."""
  return state.inner_states["muon"].inner_state[0].mu


# Steps of the dead leaves: zero for N_ZERO steps, one step with gradient
# (an expert that gets tokens again), frozen again for N_ZERO steps, one
# step with gradient.
SCHEDULE = [True] * N_ZERO + [False] + [True] * N_ZERO + [False]


@pytest.mark.parametrize("name", _aliases())
def test_leaves_without_gradient_stay_finite_start_fresh_and_donate(name):
  """The dead leaves through SCHEDULE: every state and update finite; no
  move while dead from the start; the first nonzero step equals a fresh
  start's times FRESH_START's factor (the Muon matrix) and Adam's step
  N + 1 from zero moments (the AdamW vector); frozen after training, the
  momentum decays exactly by ``beta^N``. Then the same steps under
  ``jax.jit(step, donate_argnums=(0, 1))`` (XLA may reuse the params' and
  the state's buffers for the outputs, which fails if two leaves share a
  buffer): bit-identical, and the donated params consumed."""
  if name not in FRESH_START:
    pytest.fail(f"alias {name!r}: state its first-nonzero-step property in "
                "FRESH_START (tests/test_faults.py) from ALGORITHMS.md")
  tx = _tx(name)
  step = _stepper(tx)
  params0 = _params()
  params, state = params0, tx.init(params0)
  beta = inspect.signature(ALIASES[name]).parameters["momentum"].default
  for t, dead in enumerate(SCHEDULE):
    g = _grads(t, dead=DEAD if dead else ())
    new_params, new_state, updates = step(params, state, g)
    assert _finite(new_state) and _finite(updates), (name, t)
    if t < N_ZERO:  # no gradient, no decay: the leaf does not move
      for k in DEAD:
        chex.assert_trees_all_equal(new_params[k], params0[k])
    elif t == N_ZERO:
      _, _, fresh = step(params0, tx.init(params0), g)
      factor = FRESH_START[name](N_ZERO)
      np.testing.assert_allclose(updates["dead"], factor * fresh["dead"],
                                 rtol=tol(1e-5), atol=tol(1e-7))
      if factor != 1.0:  # the stated factor, not a coincidence
        assert not np.allclose(updates["dead"], fresh["dead"], rtol=1e-3)
      # AdamW's vector: Adam's step N + 1 from zero moments (float64).
      _, want = reference.adamw_step(
          (0.0, 0.0, N_ZERO), np.zeros(16),
          np.asarray(g["dead_b"], np.float64), ADAMW_LR)
      np.testing.assert_allclose(updates["dead_b"], want, rtol=1e-5)
      trained = np.asarray(_muon_momentum(new_state)["dead"])
    elif t == 2 * N_ZERO:
      np.testing.assert_allclose(_muon_momentum(new_state)["dead"],
                                 beta ** N_ZERO * trained, rtol=1e-6)
    else:
      assert float(jnp.abs(updates["dead"]).max()) > 0
    params, state = new_params, new_state

  donated = _stepper(tx, donate_argnums=(0, 1))
  got = (_params(), tx.init(_params()))
  for t, dead in enumerate(SCHEDULE):
    inputs = got
    got = donated(*got, _grads(t, dead=DEAD if dead else ()))[:2]
    assert all(x.is_deleted() for x in jax.tree.leaves(inputs[0])), t
  chex.assert_trees_all_equal(got, (params, state))


@pytest.mark.parametrize("name", _aliases())
def test_debug_nans_is_quiet_with_an_all_zero_gradient_leaf(name):
  """Under ``jax_debug_nans`` any NaN an operation produces raises: eagerly
  the output of every primitive (even in a branch a ``where`` discards),
  under jit the outputs (then the jitted function reruns op by op). Zero
  gradient leaves (a matrix, a vector, one expert of a stack) produce none:
  a first step eagerly, a second jitted."""
  tx = _tx(name)
  params = _params()
  with jax.debug_nans(True):
    state = tx.init(params)
    for t, update in enumerate((tx.update, jax.jit(tx.update))):
      updates, state = update(_grads(t, dead=DEAD), state, params)
      params = optax.apply_updates(params, updates)
  assert _finite(state) and _finite(params)
