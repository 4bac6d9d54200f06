"""Checkpointing: the optimizer state is a pytree of arrays only, and an orbax
checkpoint taken mid-run resumes bit-identically to an uninterrupted run.

Issue 7, item 5. The optax state of an alias is a ``PartitionState`` of
``MaskedState``s whose trees hold ``MaskedNode`` / ``EmptyState`` nodes: both
are pytree nodes without leaves, so ``orbax.checkpoint.StandardCheckpointer``
saves the arrays and restores the same structure from an abstract target.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests._sweeps import sweep

# `make test` only (orbax round trips of every optimizer state);
# `make test-fast` keeps the reference checks of the math.
pytestmark = pytest.mark.slow

ocp = pytest.importorskip("orbax.checkpoint")

CASES = {
    "muon": lambda: om.muon(0.02),
    "adamuon": lambda: om.adamuon(0.02),
    "mommuon": lambda: om.mommuon(0.02),
    "mommuon_every3": lambda: om.mommuon(0.02, ns_every=3),
    "mommuon_every0": lambda: om.mommuon(0.02, ns_every=0),
    "ogsignmuon": lambda: om.ogsignmuon(0.02),
    "normuon": lambda: om.normuon(0.02, weight_decay=0.1),
    "inject_hyperparams_adamuon": lambda: optax.inject_hyperparams(
        om.adamuon, static_args=om.static_args(om.adamuon),
        hyperparam_dtype=jnp.float32)(learning_rate=optax.cosine_decay_schedule(
            0.02, 10)),
    "apply_if_finite_mommuon": lambda: optax.apply_if_finite(
        om.mommuon(0.02, ns_every=2), max_consecutive_errors=3),
}


def _params():
  rng = np.random.default_rng(0)
  shapes = {"w": (4, 6), "t": (6, 4), "conv": (3, 3, 2, 4), "b": (4,)}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32)
          for k, s in shapes.items()}


def _grads(params, t):
  # Gradients that depend on the params (a quadratic pull towards a moving
  # target), so any difference in state shows up in later steps.
  rng = np.random.default_rng(100 + t)
  return jax.tree.map(
      lambda p: p - jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def _stepper(tx):

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _train(step, params, state, ts):
  for t in ts:
    params, state = step(params, state, _grads(params, t))
  return params, state


@pytest.mark.parametrize("name", sweep(CASES, fast=("muon", "mommuon_every3")))
def test_orbax_checkpoint_resumes_bit_identically(name, tmp_path):
  total, cut = 6, 2  # MomMuon(ns_every=3) refreshes at steps 1 and 4
  params0 = _params()
  tx = CASES[name]()
  step = _stepper(tx)
  want_params, want_state = _train(step, params0, tx.init(params0),
                                   range(total))

  params, state = _train(step, params0, tx.init(params0), range(cut))
  # Arrays only (MaskedNode / EmptyState are nodes without leaves), with the
  # structure init gives.
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
  assert jax.tree.structure(state) == jax.tree.structure(tx.init(params0))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  ckpt.wait_until_finished()

  # As in a fresh process: a new optimizer object, restored against an
  # abstract target built by its init (shapes and dtypes only).
  tx2 = CASES[name]()
  target = jax.eval_shape(
      lambda p: {"params": p, "opt_state": tx2.init(p)}, params0)
  restored = ckpt.restore(tmp_path / "ckpt", target)
  assert jax.tree.structure(restored) == jax.tree.structure(
      {"params": params, "opt_state": state})
  chex.assert_trees_all_equal(restored["opt_state"], state)
  got_params, got_state = _train(step, restored["params"],
                                 restored["opt_state"], range(cut, total))
  chex.assert_trees_all_equal(got_params, want_params)
  chex.assert_trees_all_equal(got_state, want_state)
  chex.assert_trees_all_equal_dtypes(got_state, want_state)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["mommuon_every3"])
def test_nnx_optimizer_checkpoint_resumes_bit_identically(name, tmp_path):
  nnx = pytest.importorskip("flax.nnx")

  class Mlp(nnx.Module):

    def __init__(self, rngs):
      self.hidden = nnx.Linear(6, 8, rngs=rngs)
      self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.out(jax.nn.relu(self.hidden(x)))

  def build():
    model = Mlp(nnx.Rngs(0))
    return model, nnx.Optimizer(model, CASES[name](), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss = lambda m: jnp.mean((m(x) - y) ** 2)
    optimizer.update(model, nnx.grad(loss)(model))

  rng = np.random.default_rng(0)
  batches = [(jnp.asarray(rng.standard_normal((5, 6)), jnp.float32),
              jnp.asarray(rng.standard_normal((5, 3)), jnp.float32))
             for _ in range(5)]

  model, optimizer = build()
  for x, y in batches:
    train_step(model, optimizer, x, y)
  want = nnx.state((model, optimizer))

  model, optimizer = build()
  for x, y in batches[:2]:
    train_step(model, optimizer, x, y)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", nnx.state((model, optimizer)))
  ckpt.wait_until_finished()

  model, optimizer = build()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          nnx.state((model, optimizer)))
  nnx.update((model, optimizer), ckpt.restore(tmp_path / "ckpt", abstract))
  for x, y in batches[2:]:
    train_step(model, optimizer, x, y)
  chex.assert_trees_all_equal(nnx.state((model, optimizer)), want)
