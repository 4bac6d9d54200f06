"""Hyperball (``om.hyperball``, ``om.muonh``, ``om.normuonh``) against the
NumPy reference of ALGORITHMS.md ("Hyperball") and its defining properties:
each matrix stays on the sphere of its initial norm, one radius per matrix
of a stacked leaf, zero-initialised matrices grow inside their ball, a zero
direction leaves the weights as they are."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests import reference as ref

SHAPES = {"wide": (6, 10), "tall": (12, 5), "conv": (3, 3, 2, 4),
          "stack": (3, 4, 8)}


def _batch_axes(path, leaf):
  del path
  return (0,) if leaf.ndim == 3 else None


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  out = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
  # One radius per matrix: three scales, the last matrix all zeros.
  out["stack"] = out["stack"] * np.array([1.0, 10.0, 0.0])[:, None, None]
  return {k: jnp.asarray(v, dtype) for k, v in out.items()}


def _directions(step, shapes=SHAPES):
  rng = np.random.default_rng(100 + step)
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32)
          for k, s in shapes.items()}


def _matrices(name, x):
  """The matrices of one leaf of SHAPES, as NumPy float64."""
  x = np.asarray(x, np.float64)
  return list(x) if name == "stack" else [x]


def _step(tx):
  @jax.jit
  def step(params, state, u):
    upd, state = tx.update(u, state, params)
    return optax.apply_updates(params, upd), state
  return step


def test_steps_match_the_reference_one_radius_per_matrix():
  """Five steps of ``hyperball(0.1)`` on random directions, float32,
  against float64 NumPy; the radii are the matrices' initial norms (the
  zero matrix of the stack: ``sqrt(fan_out)``)."""
  lr = 0.1
  params = _params()
  tx = om.hyperball(lr, batch_axes=_batch_axes)
  state = tx.init(params)
  assert state.radius["stack"].shape == (3,)
  assert state.radius["wide"].shape == ()
  want = {k: _matrices(k, p) for k, p in params.items()}
  radii = {k: [ref.hyperball_radius(m) for m in ms] for k, ms in want.items()}
  for k in SHAPES:
    np.testing.assert_allclose(
        np.asarray(state.radius[k]).reshape(-1),
        [r for r, _ in radii[k]], rtol=1e-6)
    assert np.asarray(state.from_zero[k]).reshape(-1).tolist() == [
        z for _, z in radii[k]]
  assert radii["stack"][2] == (pytest.approx(np.sqrt(8)), True)
  step = _step(tx)
  for t in range(5):
    u = _directions(t)
    params, state = step(params, state, u)
    for k in SHAPES:
      want[k] = [ref.hyperball_step(w, d, lr, r, z) for w, d, (r, z) in zip(
          want[k], _matrices(k, u[k]), radii[k])]
      np.testing.assert_allclose(
          np.stack(_matrices(k, params[k])), np.stack(want[k]), rtol=1e-5,
          atol=1e-6, err_msg=f"{k}, step {t + 1}")


def test_frobenius_norm_kept_to_1e_6_over_many_steps():
  """400 float32 steps of a large relative step: every matrix's norm stays
  its initial one to 1e-6 relative at every step (the zero matrix of the
  stack: at most its target radius)."""
  steps = 400
  params = {k: _params()[k] for k in ("wide", "stack")}
  tx = om.hyperball(0.3, batch_axes=_batch_axes)
  state = tx.init(params)
  rng = np.random.default_rng(1)
  us = {k: jnp.asarray(rng.standard_normal((steps,) + p.shape), jnp.float32)
        for k, p in params.items()}

  def body(carry, u):
    params, state = carry
    upd, state = tx.update(u, state, params)
    params = optax.apply_updates(params, upd)
    norms = {k: jnp.sqrt(jnp.sum(jnp.square(p), axis=(-2, -1)))
             for k, p in params.items()}
    return (params, state), norms

  _, norms = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), us))(
      params, state)
  for k in params:
    rel = (np.asarray(norms[k], np.float64)
           / np.asarray(state.radius[k], np.float64) - 1).reshape(steps, -1)
    ball = np.asarray(state.from_zero[k]).reshape(-1)
    assert np.abs(rel[:, ~ball]).max() < 1e-6, (k, np.abs(rel).max())
    assert (rel[:, ball] < 1e-6).all(), k


def test_a_zero_matrix_grows_inside_its_ball():
  """A constant direction from zero: ``||W||`` is ``t lr R`` until it
  reaches ``R`` and then stays there; with ``zero_init_rms`` the radius is
  ``rms sqrt(fan_in fan_out)``."""
  for rms, want_r in ((None, np.sqrt(6)), (0.5, 0.5 * np.sqrt(24))):
    params = {"w": jnp.zeros((4, 6))}
    tx = om.hyperball(0.3, zero_init_rms=rms)
    state = tx.init(params)
    np.testing.assert_allclose(state.radius["w"], want_r, rtol=1e-6)
    u = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((4, 6)),
                          jnp.float32)}
    step = _step(tx)
    norms = []
    for _ in range(5):
      params, state = step(params, state, u)
      norms.append(float(jnp.linalg.norm(params["w"])))
    np.testing.assert_allclose(
        norms, want_r * np.array([0.3, 0.6, 0.9, 1.0, 1.0]), rtol=1e-5)
    # Pointing against the direction it grew along.
    direction = -np.asarray(u["w"]) / np.linalg.norm(u["w"])
    np.testing.assert_allclose(np.asarray(params["w"]) / norms[-1],
                               direction, atol=1e-6)


def test_zero_direction_leaves_the_weights_unchanged():
  params = _params()
  tx = om.hyperball(0.1, batch_axes=_batch_axes)
  state = tx.init(params)
  upd, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), state,
                              params)
  chex.assert_trees_all_equal(upd, jax.tree.map(jnp.zeros_like, params))


def test_update_is_independent_of_the_direction_scale():
  params = _params()
  tx = om.hyperball(0.1, batch_axes=_batch_axes)
  state = tx.init(params)
  u = _directions(0)
  update = jax.jit(tx.update)
  a, _ = update(u, state, params)
  for c in (2.0**-100, 2.0**100):
    b, _ = update(jax.tree.map(lambda x, c=c: x * c, u), state, params)
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtypes_and_bfloat16_norm(dtype):
  """Updates in the directions' dtype; bfloat16 weights stay on the sphere
  to bfloat16 rounding."""
  params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(
      (16, 32)), dtype)}
  tx = om.hyperball(0.1)
  state = tx.init(params)
  assert state.radius["w"].dtype == jnp.float32
  r0 = float(state.radius["w"])
  step = _step(tx)
  for t in range(20):
    u = jax.tree.map(lambda x: x.astype(dtype),
                     _directions(t, {"w": (16, 32)}))
    params, state = step(params, state, u)
  assert params["w"].dtype == dtype
  rel = abs(float(jnp.linalg.norm(params["w"].astype(jnp.float32))) / r0 - 1)
  assert rel < (1e-6 if dtype == jnp.float32 else 2 ** -7), rel


def test_needs_params_and_checks_its_arguments():
  params = {"w": jnp.ones((4, 6))}
  tx = om.hyperball(0.1)
  state = tx.init(params)
  with pytest.raises(ValueError, match="hyperball needs the params"):
    tx.update(params, state)
  with pytest.raises(ValueError, match="hyperball needs the params"):
    om.muonh(0.02).update(params, om.muonh(0.02).init(params))
  with pytest.raises(ValueError, match="learning_rate"):
    om.hyperball(-0.1)
  with pytest.raises(ValueError, match="zero_init_rms"):
    om.hyperball(0.1, zero_init_rms=0.0)
  with pytest.raises(ValueError, match=r"hyperball.*'b'.*\(4,\)"):
    om.hyperball(0.1).init({"b": jnp.ones(4)})


def _reference_alias(direction_cls, params, grads, lr, adam_lr=3e-4):
  """The alias's steps in NumPy: the reference direction of each matrix
  leaf, then its Hyperball step; AdamW for the bias."""
  want = {k: np.asarray(p, np.float64) for k, p in params.items()}
  dirs = {k: direction_cls(np.shape(p)) for k, p in params.items()
          if k != "bias"}
  radii = {k: ref.hyperball_radius(p) for k, p in want.items() if k != "bias"}
  adam = (np.zeros_like(want["bias"]), np.zeros_like(want["bias"]), 0)
  out = []
  for g in grads:
    for k in want:
      if k == "bias":
        adam, want[k] = ref.adamw_step(adam, want[k], np.asarray(g[k]),
                                       adam_lr)
      else:
        u = dirs[k](np.asarray(g[k]))
        want[k] = ref.hyperball_step(want[k], u, lr, *radii[k])
    out.append(dict(want))
  return out


@pytest.mark.parametrize("alias, direction", [
    (om.muonh, ref.Muon), (om.normuonh, ref.NorMuon)],
    ids=["muonh", "normuonh"])
def test_aliases_compose_the_reference_direction_with_hyperball(
    alias, direction):
  """Muon's and NorMuon's reference directions, then Hyperball; a
  zero-initialised matrix (``proj``) grows in its ball; the bias is
  AdamW's."""
  rng = np.random.default_rng(0)
  params = {"wide": jnp.asarray(rng.standard_normal((6, 10)), jnp.float32),
            "tall": jnp.asarray(rng.standard_normal((12, 5)), jnp.float32),
            "proj": jnp.zeros((10, 6)), "bias": jnp.zeros(6)}
  grads = [{k: jnp.asarray(rng.standard_normal(p.shape), jnp.float32)
            for k, p in params.items()} for _ in range(3)]
  want = _reference_alias(direction, params, grads, 0.05)
  tx = alias(0.05, ns_dtype=jnp.float32,
             param_labels={"wide": "muon", "tall": "muon", "proj": "muon",
                           "bias": "adamw"})
  step = _step(tx)
  state = tx.init(params)
  for t, g in enumerate(grads):
    params, state = step(params, state, g)
    for k in params:
      np.testing.assert_allclose(np.asarray(params[k]), want[t][k],
                                 rtol=1e-4, atol=1e-5,
                                 err_msg=f"{k}, step {t + 1}")
  assert float(jnp.linalg.norm(params["proj"])) <= np.sqrt(6) * (1 + 1e-6)


def test_stacked_leaf_through_the_alias():
  """``batch_axes=om.stacked(...)``: each layer of the stack keeps its own
  norm under MuonH."""
  rng = np.random.default_rng(0)
  scales = np.array([0.5, 2.0])[:, None, None]
  params = {"layers": {"kernel": jnp.asarray(
      scales * rng.standard_normal((2, 8, 8)), jnp.float32)}}
  tx = om.muonh(0.1, batch_axes=om.stacked("layers"))
  state = tx.init(params)
  r0 = np.linalg.norm(np.asarray(params["layers"]["kernel"]), axis=(1, 2))
  step = _step(tx)
  for _ in range(4):
    g = {"layers": {"kernel": jnp.asarray(rng.standard_normal((2, 8, 8)),
                                          jnp.float32)}}
    params, state = step(params, state, g)
  r = np.linalg.norm(np.asarray(params["layers"]["kernel"]), axis=(1, 2))
  np.testing.assert_allclose(r, r0, rtol=1e-6)


@pytest.mark.slow  # as tests/test_checkpoint.py: `make test` only
def test_orbax_checkpoint_resumes_bit_identically(tmp_path):
  """MuonH's state (momentum, radii, the zero flags, counts) through orbax:
  a run cut at step 2 and restored from an abstract target continues
  bit-identically."""
  ocp = pytest.importorskip("orbax.checkpoint")
  params0 = dict(_params(), bias=jnp.zeros(4))
  make = lambda: om.muonh(0.05, batch_axes=_batch_axes)
  tx = make()
  step = _step(tx)

  def train(params, state, ts):
    for t in ts:
      g = dict(_directions(t), bias=jnp.full((4,), 0.1 * t))
      params, state = step(params, state, g)
    return params, state

  want = train(params0, tx.init(params0), range(5))
  params, state = train(params0, tx.init(params0), range(2))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  ckpt.wait_until_finished()
  target = jax.eval_shape(
      lambda p: {"params": p, "opt_state": make().init(p)}, params0)
  restored = ckpt.restore(tmp_path / "ckpt", target)
  chex.assert_trees_all_equal(restored["opt_state"], state)
  got = train(restored["params"], restored["opt_state"], range(2, 5))
  chex.assert_trees_all_equal(got, want)
  chex.assert_trees_all_equal_dtypes(got[1], want[1])


def test_after_adam_for_a_head_adamh():
  """``chain(scale_by_adam, hyperball)``, AdamH on an output head: Adam's
  bias-corrected direction (NumPy), then the reference Hyperball step."""
  rng = np.random.default_rng(0)
  params = {"head": jnp.asarray(0.02 * rng.standard_normal((8, 16)),
                                jnp.float32)}
  tx = optax.chain(optax.scale_by_adam(b1=0.9, b2=0.95), om.hyperball(0.05))
  step = _step(tx)
  state = tx.init(params)
  w = np.asarray(params["head"], np.float64)
  radius, _ = ref.hyperball_radius(w)
  m = v = np.zeros_like(w)
  for t in range(1, 4):
    g = rng.standard_normal((8, 16))
    params, state = step(params, state, {"head": jnp.asarray(g, jnp.float32)})
    m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
    u = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.95**t)) + 1e-8)
    w = ref.hyperball_step(w, u, 0.05, radius)
    np.testing.assert_allclose(np.asarray(params["head"]), w, rtol=1e-5,
                               atol=1e-7)
