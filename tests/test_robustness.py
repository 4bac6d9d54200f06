"""Robustness: safe numerics, non-finite steps, dtypes.

Issue 7. Each test asserts a behaviour a user would otherwise find out about
hours into a run. Values are compared with the float64 NumPy reference of
ALGORITHMS.md (tests/reference.py, with its scale-free ``relative_eps``
guards), or with the same optimizer on a gradient that differs only in what
must not matter (its scale, a skipped NaN step). The errors a user sees for
bad labels, leaves and ``batch_axes`` are tested in tests/test_labels.py.
Tests that run the default ``ns_dtype`` take their tolerances from
tests/_tolerances.py (float32 on the CPU, bfloat16 on GPU/TPU).
"""

from __future__ import annotations

import collections
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests import reference
from tests._sweeps import ALIASES, sweep
from tests._tolerances import tol

# `make test` only (every variant at extreme scales, dtypes and NaNs);
# `make test-fast` keeps the reference checks of the math.
pytestmark = pytest.mark.slow

# Every alias, plus MomMuon refreshing its preconditioner only every 2 steps.
VARIANTS = dict(ALIASES, mommuon_every2=lambda lr=0.02, **kw: om.mommuon(
    lr, ns_every=2, **kw))

# Every kind of matrix leaf, in two shapes as the aliases see them: wide,
# tall, conv and stacked leaves are all 4x18 matrices in the wide orientation
# (so they share one stacked Newton–Schulz call and compile it once), the row
# and the column vector 1x5 ones.
MATRIX_SHAPES = {
    "wide": (4, 18),
    "tall": (18, 4),
    "row": (1, 5),
    "col": (5, 1),
    "conv": (3, 3, 2, 4),
    "stack": (2, 4, 18),
}


def _batch_axes(path, leaf):
  del leaf
  return (0,) if path[-1].key == "stack" else None


def _matrices(dtype=jnp.float32):
  return {k: jnp.zeros(s, dtype) for k, s in MATRIX_SHAPES.items()}


def _params(dtype=jnp.float32):
  return dict(_matrices(dtype), bias=jnp.zeros((4,), dtype))


def _matrices_of(tree):
  return {k: tree[k] for k in MATRIX_SHAPES}


def _grads(params, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape) * scale, p.dtype),
      params)


def _make(name, **kw):
  return VARIANTS[name](0.02, batch_axes=_batch_axes, **kw)


_TRACES = collections.Counter()


@functools.cache
def _jitted(name):
  """One optimizer and one jitted update per variant, shared by the tests
  (each dtype of the params compiles once). ``_TRACES[name]`` counts its
  traces, i.e. its compiled signatures."""
  tx = _make(name)

  def update(*args):
    _TRACES[name] += 1
    return tx.update(*args)

  return tx, jax.jit(update)


def _run(tx, params, grads_seq, update=None):
  """Updates of every step (no params change: updates only)."""
  if isinstance(tx, str):
    tx, update = _jitted(tx)
  update = update or tx.update
  state = tx.init(params)
  outs = []
  for g in grads_seq:
    u, state = update(g, state, params)
    outs.append(u)
  return outs, state


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
             for x in jax.tree.leaves(tree))


# ----------------------------------------------------------- 1. numerics ----


@pytest.mark.parametrize("name", sweep(VARIANTS))
def test_zero_gradients_give_zero_updates(name):
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  outs, state = _run(name, params, [zeros] * 3)
  for u in outs:
    for k in MATRIX_SHAPES:
      chex.assert_trees_all_equal(u[k], jnp.zeros_like(params[k]))
  assert _all_finite(state)


@pytest.mark.parametrize("ns_every", [1, 0, 3])
def test_mommuon_zero_first_gradient_does_not_poison_preconditioner(ns_every):
  # A zero first gradient (e.g. below a zero-initialised layer) must not set
  # P = inverse_sqrt(0) = 1.5^ns_steps I: the first nonzero momentum does.
  params = {"w": jnp.zeros((4, 6))}
  g = _grads(params, 0)
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = om.mommuon(1.0, ns_every=ns_every)
  outs, _ = _run(tx, params, [zero, g])
  # After a zero step the momentum is exactly a fresh run's first momentum,
  # and its whitened direction is about the polar factor of M: its singular
  # values are near 1 (x the shape scale sqrt(6/4)), not near 1.5^15 = 438.
  sv = np.linalg.svd(np.asarray(outs[1]["w"], np.float64), compute_uv=False)
  np.testing.assert_allclose(sv / np.sqrt(6 / 4), 1.0, atol=0.05)
  fresh, _ = _run(tx, params, [g])
  chex.assert_trees_all_close(outs[1], fresh[0], rtol=tol(1e-6),
                              atol=tol(1e-7))


@pytest.mark.parametrize("name", sweep(VARIANTS))
def test_step_does_not_depend_on_gradient_scale(name):
  # The params of the other tests (one compiled update); only the matrices'
  # gradients are scaled, the bias's (AdamW, which is not scale-free) not.
  params = _params()
  # Per-step magnitudes vary so that AdaMuon's factor is not trivially 1.
  gs = [jax.tree.map(lambda x, r=r: x * r, _grads(params, t))
        for t, r in enumerate([1.0, 3.0, 0.5])]
  ref, _ = _run(name, params, gs)
  for scale in [1e-30, 1e-6, 1e-3, 1e3, 1e6, 1e30]:
    scaled, state = _run(name, params, [
        dict(_cast(_matrices_of(g), jnp.float32, scale), bias=g["bias"])
        for g in gs])
    assert _all_finite(scaled) and _all_finite(state), scale
    chex.assert_trees_all_close(scaled, ref, rtol=tol(2e-5), atol=tol(2e-6))


@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1.0, 1e6, 1e30])
def test_adamuon_matches_float64_reference_at_any_scale(scale):
  shape = (4, 6)
  rng = np.random.default_rng(1)
  gs = [rng.standard_normal(shape) * r * scale for r in (1.0, 3.0, 0.5, 2.0)]
  tx = om.scale_by_adamuon(ns_dtype=jnp.float32)
  state = tx.init({"w": jnp.zeros(shape)})
  want = reference.AdaMuon(shape, relative_eps=True)
  for g in gs:
    u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state)
    np.testing.assert_allclose(np.asarray(u["w"]), want(g), rtol=1e-4,
                               atol=1e-5)
  assert _all_finite(state)


def test_adamuon_finite_for_huge_matrix_norm():
  # ||M||_F of 4096 entries at 1e37 overflows float32; the step must not.
  params = {"w": jnp.zeros((64, 64))}
  sign = np.sign(np.random.default_rng(0).standard_normal((64, 64)))
  g = {"w": jnp.asarray(sign * 3e38, jnp.float32)}
  ref = {"w": jnp.asarray(sign, jnp.float32)}
  (u,), state = _run(om.scale_by_adamuon(), params, [g])
  (u_ref,), _ = _run(om.scale_by_adamuon(), params, [ref])
  assert _all_finite(state)
  chex.assert_trees_all_close(u, u_ref, rtol=tol(1e-5), atol=tol(1e-6))


def _unit_grads(params, seed, subnormal=False):
  """Mixed-sign entries exactly representable in the params' dtype, so that
  scaling them by a power of two is exact."""
  rng = np.random.default_rng(seed)

  def leaf(p):
    sign = np.sign(rng.standard_normal(p.shape))
    mag = (rng.choice([1.0, 1.5], p.shape) if subnormal
           else 1 + rng.integers(0, 64, p.shape) / 64)
    return sign * mag

  return jax.tree.map(leaf, params)


def _cast(tree, dtype, scale=1.0):
  return jax.tree.map(lambda x: jnp.asarray(x * scale, dtype), tree)


# (dtype, power of two, subnormal): the largest finite values (up to 65504 =
# (2 - 2^-10) 2^15 and 3.39e38 = (2 - 2^-7) 2^127), the smallest normals and
# float16 subnormals (entries 2^-23 and 1.5 * 2^-23, exact).
EXTREMES = [
    (jnp.float16, 15, False), (jnp.float16, -14, False),
    (jnp.float16, -23, True), (jnp.bfloat16, 127, False),
    (jnp.bfloat16, -100, False), (jnp.float32, 100, False),
    (jnp.float32, -100, False)]


@pytest.mark.parametrize("name", sweep(VARIANTS))
def test_extremes_of_low_precision_give_the_unit_scale_step(name):
  for dtype, power, subnormal in EXTREMES:
    params = _params(dtype)
    units = [_unit_grads(params, s, subnormal) for s in range(2)]
    outs, state = _run(name, params, [_cast(u, dtype, 2.0**power)
                                      for u in units])
    ref, _ = _run(name, params, [_cast(u, dtype) for u in units])
    assert _all_finite(outs), (dtype, power)
    assert _all_finite(state.inner_states["muon"]), (dtype, power)
    for u, r in zip(outs, ref):
      for k in MATRIX_SHAPES:
        assert u[k].dtype == dtype
        # The exact power-of-two scale must not change the Muon step at all.
        np.testing.assert_allclose(
            np.asarray(u[k], np.float32), np.asarray(r[k], np.float32),
            rtol=1e-5, atol=1e-8, err_msg=f"{k} {dtype} 2^{power}")


@pytest.mark.parametrize("name", sweep(ALIASES))
def test_extremes_of_low_precision_finite_everywhere(name):
  # Including AdamW's leaves and bfloat16's smallest normal, whose momentum
  # (1 - beta) g underflows (flushed to zero): the step is then 0.
  for dtype, value in [(jnp.bfloat16, 3.38e38), (jnp.bfloat16, 1.2e-38),
                       (jnp.float16, 65504.0), (jnp.float16, 6e-8)]:
    params = _params(dtype)
    grads = [_cast(_unit_grads(params, s), dtype, value / 2) for s in range(3)]
    outs, _ = _run(name, params, grads)
    assert _all_finite(outs), (dtype, value)
    assert all(x.dtype == dtype for x in jax.tree.leaves(outs))


@pytest.mark.parametrize("value", [65504.0, 1e-3, 1.2e-7])
def test_adamw_leaves_of_float16_params_run_in_float32(value):
  # optax.adamw in float16 gives inf / NaN here (its eps rounds to 0 and g^2
  # overflows or underflows); the aliases run it in float32.
  params = {"bias": jnp.zeros((5,), jnp.float16)}
  g = _cast(_unit_grads(params, 0), jnp.float16, value / 2)
  (u,), state = _run(om.muon(adamw_learning_rate=1e-3), params, [g])
  g32 = jax.tree.map(lambda x: x.astype(jnp.float32), g)
  (want,), _ = _run(optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.0),
                    jax.tree.map(lambda x: x.astype(jnp.float32), params),
                    [g32])
  assert u["bias"].dtype == jnp.float16
  np.testing.assert_allclose(np.asarray(u["bias"], np.float32),
                             np.asarray(want["bias"]), rtol=1e-3)
  assert _all_finite(state)


# ------------------------------------------------- 2. non-finite gradients --


def test_nan_in_one_leaf_stays_in_that_leaf():
  # Same-shape leaves are stacked into one batched call; a NaN in one must
  # not reach the others (documented: the NaN leaf's update is NaN). "wide"
  # is stacked with the stack's slices, and except for NorMuon (whose
  # direction depends on the orientation) with "tall" and "conv" too.
  params = _params()
  g = _grads(params, 0)
  bad = dict(g, wide=g["wide"].at[1, 2].set(jnp.nan))
  for name in ALIASES:
    (u,), state = _run(name, params, [bad])
    (ref,), _ = _run(name, params, [g])
    assert not bool(jnp.any(jnp.isfinite(u["wide"]))), name
    for k in params:
      if k != "wide":
        chex.assert_trees_all_equal(u[k], ref[k])


@pytest.mark.parametrize("bad_value", [jnp.nan, jnp.inf])
def test_non_finite_gradient_poisons_the_leaf_without_apply_if_finite(
    bad_value):
  params = {"w": jnp.zeros((4, 6))}
  g = _grads(params, 0)
  bad = {"w": g["w"].at[0, 0].set(bad_value)}
  outs, state = _run(_make("muon"), params, [bad, g])
  # The momentum remembers it: later finite steps are NaN too.
  assert not _all_finite(outs[0]) and not _all_finite(outs[1])


@pytest.mark.parametrize("name", sweep(VARIANTS))
def test_apply_if_finite_skips_the_nan_step_exactly(name):
  # Two matrices (one of them non-finite in the partly bad step) and the
  # AdamW bias are what the check needs; fewer shapes compile faster.
  params = {k: v for k, v in _params().items() if k in ("wide", "tall",
                                                         "bias")}
  g = [_grads(params, s) for s in range(4)]
  nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), g[0])
  part = dict(g[1], wide=g[1]["wide"].at[0, 0].set(jnp.inf))
  tx = optax.apply_if_finite(_make(name), max_consecutive_errors=2)
  update = jax.jit(tx.update)

  def run(seq):
    state, outs = tx.init(params), []
    for grads in seq:
      u, state = update(grads, state, params)
      outs.append(u)
    return outs, state

  got, got_state = run([g[0], nan, part, g[1], g[2], g[3]])
  want, want_state = run([g[0], g[1], g[2], g[3]])
  for skipped in got[1:3]:
    chex.assert_trees_all_equal(skipped, jax.tree.map(jnp.zeros_like,
                                                      skipped))
  chex.assert_trees_all_equal(got[0], want[0])
  chex.assert_trees_all_equal(got[3:], want[1:])
  chex.assert_trees_all_equal(got_state.inner_state, want_state.inner_state)
  assert int(got_state.total_notfinite) == 2


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
  params = {"w": jnp.zeros((4, 6))}
  nan = {"w": jnp.full((4, 6), jnp.nan)}
  tx = optax.apply_if_finite(om.muon(), max_consecutive_errors=1)
  outs, state = _run(tx, params, [nan, nan])
  assert _all_finite(outs[0]) and not _all_finite(outs[1])
  assert not _all_finite(state.inner_state)


# -------------------------------------------------------------- 3. dtypes ----


def _dtypes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


@pytest.mark.parametrize("name", sweep(VARIANTS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params_dtypes_and_single_compile(name, dtype):
  params = _params(dtype)
  tx = _jitted(name)[0]
  state = tx.init(params)
  muon_state = state.inner_states["muon"].inner_state[0]
  # Momentum defaults to float32 (the param's dtype promoted to float32).
  for k in MATRIX_SHAPES:
    assert muon_state.mu[k].dtype == jnp.float32
  adam_state = state.inner_states["adamw"].inner_state[0]
  assert adam_state.mu["bias"].dtype == adam_state.nu["bias"].dtype == (
      jnp.float32)
  # The update the other tests of this variant compile (with these params
  # it may have compiled already): the steps after the first reuse the first
  # one's compiled signature.
  update = _jitted(name)[1]
  spec = _dtypes(state)
  for s in range(3):
    g = _grads(params, s)
    u, state = update(g, state, params)
    assert _dtypes(u) == _dtypes(params)
    assert _dtypes(state) == spec
    params = optax.apply_updates(params, u)
    assert _dtypes(params) == _dtypes(_params(dtype))
    if s == 0:
      traces, compiled = _TRACES[name], update._cache_size()
  assert _TRACES[name] == traces and update._cache_size() == compiled


@pytest.mark.parametrize("name", sweep(ALIASES))
def test_mu_dtype_sets_the_momentum_dtype(name):
  params = _params(jnp.float32)
  tx = _make(name, mu_dtype=jnp.bfloat16)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for s in range(2):
    u, state = update(_grads(params, s), state, params)
  muon_state = state.inner_states["muon"].inner_state[0]
  for k in MATRIX_SHAPES:
    assert muon_state.mu[k].dtype == jnp.bfloat16
  assert state.inner_states["adamw"].inner_state[0].mu["bias"].dtype == (
      jnp.bfloat16)
  assert _dtypes(u) == _dtypes(params)
  assert update._cache_size() == 1


def test_inject_hyperparams_compiles_once():
  # A matrix and the AdamW bias: one of each part of the alias.
  params = {k: v for k, v in _params(jnp.bfloat16).items()
            if k in ("wide", "bias")}
  for alias in (om.muon, om.mommuon):
    # Without hyperparam_dtype, optax stores the hyperparameters in the
    # params' dtype: momentum 0.95 would become bfloat16 0.9492.
    tx = optax.inject_hyperparams(
        alias, static_args=om.static_args(alias),
        hyperparam_dtype=jnp.float32)(learning_rate=0.02,
                                      batch_axes=_batch_axes)
    state = tx.init(params)
    assert state.hyperparams["momentum"].dtype == jnp.float32
    update = jax.jit(tx.update)
    for s in range(2):
      _, state = update(_grads(params, s), state, params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)
    _, state = update(_grads(params, 3), state, params)
    assert update._cache_size() == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_float32_momentum_of_low_precision_gradients_is_exact(dtype):
  # buf = beta buf + (1 - beta) g, in float64 from the same (rounded)
  # gradients: the float32 momentum must not round (1 - beta) g to the
  # gradient's dtype.
  params = {"w": jnp.zeros((4, 6), dtype)}
  gs = [_cast(_grads(params, s), dtype, 1e-3) for s in range(3)]
  _, state = _run(om.scale_by_muon(), params, gs)
  buf = np.zeros((4, 6))
  for g in gs:
    buf = 0.95 * buf + 0.05 * np.asarray(g["w"], np.float64)
  assert state.mu["w"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(state.mu["w"]), buf, rtol=1e-6,
                             atol=1e-6 * np.abs(buf).max())


def test_zero_leaf_batched_with_others_does_not_change_them():
  # "wide" is stacked with the stack's slices, and except for NorMuon with
  # "tall" and "conv" too: with a zero gradient there, every other leaf gets
  # the update it gets when "wide"'s gradient is not zero. (That each matrix
  # of a stack gets its own reference step is checked in test_variants.py.)
  params = _params()
  g = _grads(params, 0)
  with_zero = dict(g, wide=jnp.zeros_like(g["wide"]))
  for name in VARIANTS:
    (u,), _ = _run(name, params, [with_zero])
    (ref,), _ = _run(name, params, [g])
    chex.assert_trees_all_equal(u["wide"], jnp.zeros_like(g["wide"]))
    for k in params:
      if k != "wide":
        chex.assert_trees_all_close(u[k], ref[k], rtol=tol(1e-6),
                                    atol=tol(1e-8))
