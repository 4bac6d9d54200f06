"""Every alias's step against the NumPy reference of ALGORITHMS.md."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests import reference as ref
from tests._sweeps import sweep
from tests._tolerances import tol

# A wide, a tall and a conv kernel that are all 24x72 matrices in the wide
# orientation: the aliases stack same-shape matrices into one Newton–Schulz
# call, so the three leaves compile one program, not three (NorMuon, whose
# direction depends on the orientation, two), and each leaf's step is checked
# against its own reference through that shared call.
SHAPES = {"dense": (24, 72), "tall": (72, 24), "conv": (3, 3, 8, 24)}
STEPS = 5


def _params(seed=0, shapes=SHAPES):
  rng = np.random.default_rng(seed)
  return {k: (0.1 * rng.standard_normal(s)).astype(np.float32)
          for k, s in shapes.items()}


def _grads(step, shapes=SHAPES):
  rng = np.random.default_rng(1000 + step)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@functools.cache
def _jitted(alias, **kwargs):
  """One optimizer and its jitted update per configuration, shared by the
  tests that run the same one (each compiles once per tree)."""
  tx = alias(**kwargs)
  return tx, jax.jit(tx.update)


def _run(tx, params, steps=STEPS, shapes=SHAPES, update=None):
  """The params after each step (``update``: a jitted ``tx.update``; by
  default ``tx.update`` jitted here)."""
  state = tx.init(params)
  update = update or jax.jit(tx.update)
  traj = []
  for t in range(steps):
    updates, state = update(_grads(t, shapes), state, params)
    params = optax.apply_updates(params, updates)
    traj.append(jax.tree.map(np.asarray, params))
  return traj


def _all_muon(params):
  return jax.tree.map(lambda _: "muon", params)


def _assert_rel_close(got, want, rtol, msg=""):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert err < rtol, f"{msg}: relative error {err:.2e} >= {rtol}"


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_equals_keller_jordan_pytorch_muon(jit, nesterov):
  """om.muon == KellerJordan/Muon's muon_update + decay, float32, 5 steps."""
  lr, wd = 0.02, 0.05
  params = _params()
  # Jitted with Nesterov (the default) this is the optimizer of
  # test_variant_matches_reference[muon]: the two share its compiled update.
  tx, update = _jitted(om.muon, **_variant_kwargs(
      om.muon, {} if nesterov else {"nesterov": False}, lr, wd))
  traj = _run(tx, params, update=update if jit else tx.update)
  for name, p in params.items():
    keller = ref.KellerMuon(ref.flax_to_torch(p), lr, nesterov=nesterov,
                            weight_decay=wd)
    for t in range(STEPS):
      want = ref.torch_to_flax(keller.step(ref.flax_to_torch(_grads(t)[name])))
      # compare the change of the params (the step), not the params.
      _assert_rel_close(traj[t][name] - p, want - p, 1e-4, f"{name} step {t}")


VARIANTS = {
    "muon": (om.muon, {}, ref.Muon, {}, 1e-4),
    "muon_polar_express": (om.muon, {"ns_coeffs": "polar_express"}, ref.Muon,
                           {"preset": "polar_express"}, 1e-3),
    "muon_rms": (om.muon, {"shape_scale": "rms"}, ref.Muon,
                 {"shape_scale": "rms"}, 1e-4),
    "adamuon": (om.adamuon, {}, ref.AdaMuon, {}, 1e-4),
    "adamuon_no_bias_correction": (
        om.adamuon, {"bias_correction": False}, ref.AdaMuon,
        {"bias_correction": False}, 1e-4),
    "mommuon": (om.mommuon, {}, ref.MomMuon, {}, 1e-3),
    "mommuon_every_3": (om.mommuon, {"ns_every": 3}, ref.MomMuon,
                        {"ns_every": 3}, 1e-3),
    "mommuon_beta_0": (om.mommuon, {"ns_beta": 0.0, "ns_every": 2},
                       ref.MomMuon, {"ns_beta": 0.0, "ns_every": 2}, 1e-3),
    "mommuon_seed": (om.mommuon, {
        "ns_average": "preconditioner", "ns_beta": 0.9, "ns_every": 1,
        "ns_rescale": False}, ref.MomMuon, {
            "average": "preconditioner", "ns_beta": 0.9, "ns_every": 1,
            "rescale": False}, 1e-3),
    "mommuon_no_rescale": (om.mommuon, {"ns_rescale": False}, ref.MomMuon,
                           {"rescale": False}, 1e-3),
    "mommuon_preconditioner_every_2": (
        om.mommuon, {"ns_average": "preconditioner", "ns_every": 2},
        ref.MomMuon, {"average": "preconditioner", "ns_every": 2}, 1e-3),
    "mommuon_gram_every_3": (om.mommuon, {"ns_average": "gram", "ns_every": 3},
                             ref.MomMuon, {"average": "gram", "ns_every": 3}, 1e-3),
    "mommuon_gram_damped": (
        om.mommuon, {"ns_average": "gram", "ns_every": 2, "ns_damping": 0.1},
        ref.MomMuon, {"average": "gram", "ns_every": 2, "damping": 0.1}, 1e-3),
    "mommuon_damped": (om.mommuon, {"ns_damping": 0.05}, ref.MomMuon,
                       {"damping": 0.05}, 1e-3),
    "ogsignmuon": (om.ogsignmuon, {}, ref.OGSignMuon, {}, 1e-4),
    "normuon": (om.normuon, {}, ref.NorMuon, {}, 1e-4),
    "normuon_beta2": (om.normuon, {"beta2": 0.5}, ref.NorMuon,
                      {"beta2": 0.5}, 1e-4),
}


def _variant_kwargs(alias, kwargs, lr, wd):
  """The arguments of test_variant_matches_reference's optimizers, in one
  order (so that :func:`_jitted` finds a configuration by them)."""
  # MomMuon has no ns_dtype: its inverse square root is always float32.
  pin = {} if alias is om.mommuon else {"ns_dtype": jnp.float32}
  return dict(learning_rate=lr, weight_decay=wd, param_labels=_all_muon,
              **pin, **kwargs)


@pytest.mark.parametrize("name", sweep(
    sorted(VARIANTS), fast=("muon", "adamuon", "mommuon", "ogsignmuon",
                            "normuon")))
def test_variant_matches_reference(name, jit=True):
  alias, kwargs, ref_cls, ref_kwargs, rtol = VARIANTS[name]
  lr, wd = 0.02, 0.05
  params = _params()
  if jit:
    tx, update = _jitted(alias, **_variant_kwargs(alias, kwargs, lr, wd))
  else:
    tx = alias(**_variant_kwargs(alias, kwargs, lr, wd))
    update = tx.update
  traj = _run(tx, params, update=update)
  for leaf, p in params.items():
    variant = ref_cls(p.shape, **ref_kwargs)
    want = np.asarray(p, np.float64)
    for t in range(STEPS):
      want = ref.sgd_step(want, variant(_grads(t)[leaf]), lr, wd)
      _assert_rel_close(traj[t][leaf] - p, want - p, rtol,
                        f"{name}/{leaf} step {t}")


@pytest.mark.slow
def test_cautious_weight_decay_matches_reference():
  lr, wd = 0.05, 0.3
  params = _params(seed=3)
  tx = om.muon(lr, weight_decay=wd, cautious_weight_decay=True,
               param_labels=_all_muon, ns_dtype=jnp.float32)
  traj = _run(tx, params)
  for leaf, p in params.items():
    variant = ref.Muon(p.shape)
    want = np.asarray(p, np.float64)
    for t in range(STEPS):
      want = ref.sgd_step(want, variant(_grads(t)[leaf]), lr, wd, cautious=True)
      _assert_rel_close(traj[t][leaf] - p, want - p, 1e-4, f"{leaf} step {t}")
  # and it is not plain decay: the trajectory differs from plain decay's
  # (its float64 reference, which om.muon matches to 1e-4 in
  # test_variant_matches_reference).
  variant = ref.Muon(params["dense"].shape)
  plain = np.asarray(params["dense"], np.float64)
  for t in range(STEPS):
    plain = ref.sgd_step(plain, variant(_grads(t)["dense"]), lr, wd)
  assert np.abs(plain - traj[-1]["dense"]).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("ns_coeffs", ["quintic", "polar_express"])
def test_rms_shape_scale_gives_update_rms_near_point_two(ns_coeffs):
  shapes = {"a": (64, 256), "b": (256, 64), "c": (128, 128), "d": (3, 3, 16, 32)}
  params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  tx = om.scale_by_muon(shape_scale="rms", ns_coeffs=ns_coeffs)
  updates, _ = tx.update(_grads(0, shapes), tx.init(params))
  for k, u in updates.items():
    rms = float(jnp.sqrt(jnp.mean(jnp.square(u))))
    assert 0.15 < rms < 0.25, (k, rms)
  # The spectral scale's RMS depends on the shape instead.
  updates, _ = om.scale_by_muon().update(_grads(0, shapes), tx.init(params))
  rms = {k: float(jnp.sqrt(jnp.mean(u**2))) for k, u in updates.items()}
  assert rms["b"] < 0.12 and rms["c"] < 0.12, rms


def test_mommuon_tall_update_stays_bounded():
  """12 steps of independent gradients on a 256x64 kernel, ns_every=4."""
  shapes = {"w": (256, 64)}
  params = {"w": np.zeros((256, 64), np.float32)}
  mom = om.scale_by_mommuon(ns_every=4)
  muon = om.scale_by_muon()
  s_mom, s_muon = mom.init(params), muon.init(params)
  for t in range(12):
    g = _grads(t, shapes)
    u_mom, s_mom = jax.jit(mom.update)(g, s_mom)
    u_muon, s_muon = jax.jit(muon.update)(g, s_muon)
    n_mom, n_muon = np.linalg.norm(u_mom["w"]), np.linalg.norm(u_muon["w"])
    assert np.isfinite(n_mom) and n_mom < 2 * n_muon, (t, n_mom, n_muon)
  # the preconditioner lives at the small side
  chex.assert_shape(s_mom.precond["w"], (64, 64))


def test_mommuon_skips_whitening_between_refreshes():
  """With ns_every=3 the preconditioner only changes on steps 1, 4, 7."""
  params = {"w": np.zeros((16, 40), np.float32)}
  tx = om.scale_by_mommuon(ns_every=3)
  state = tx.init(params)
  precs = []
  for t in range(7):
    _, state = jax.jit(tx.update)(_grads(t, {"w": (16, 40)}), state)
    precs.append(np.asarray(state.precond["w"]))
  changed = [not np.array_equal(precs[i], precs[i - 1]) for i in range(1, 7)]
  assert changed == [False, False, True, False, False, True]


@pytest.mark.parametrize("average", ["gram", "preconditioner"])
def test_mommuon_whiten_steps_matches_reference_and_ns_steps(average):
  """``whiten_steps=k`` runs k inverse-square-root iterations (the NumPy
  reference's, at a k far from the default 15), and the deprecated
  ``ns_steps=k`` is the same setting: bit-identical updates, with a
  ``DeprecationWarning`` naming ``whiten_steps``."""
  shape = (12, 20)
  params = {"w": np.zeros(shape, np.float32)}
  kw = {"ns_average": average, "ns_every": 2}
  new = om.scale_by_mommuon(whiten_steps=3, **kw)
  with pytest.warns(DeprecationWarning, match="whiten_steps"):
    old = om.scale_by_mommuon(ns_steps=3, **kw)
  want = ref.MomMuon(shape, ns_steps=3, ns_every=2, average=average)
  s_new, s_old = new.init(params), old.init(params)
  for t in range(3):
    g = _grads(t, {"w": shape})
    u_new, s_new = jax.jit(new.update)(g, s_new)
    u_old, s_old = jax.jit(old.update)(g, s_old)
    np.testing.assert_array_equal(u_new["w"], u_old["w"])
    _assert_rel_close(u_new["w"], want(np.asarray(g["w"], np.float64)),
                      1e-4, f"step {t}")


def test_mommuon_whiten_steps_and_ns_steps_together_are_an_error():
  with pytest.raises(ValueError, match=r"whiten_steps=4.*ns_steps=6"):
    om.scale_by_mommuon(whiten_steps=4, ns_steps=6)
  with pytest.raises(ValueError, match="whiten_steps must be >= 1"):
    om.scale_by_mommuon(whiten_steps=0)


def test_stacked_layers_with_batch_axes_match_per_slice_reference():
  """A (layers, in, out) leaf with batch_axes=(0,): each slice is a matrix."""
  shapes = {"stack": (3, 24, 40)}
  params = {"stack": np.zeros(shapes["stack"], np.float32)}
  tx = om.scale_by_muon(batch_axes=(0,), ns_dtype=jnp.float32)
  state = tx.init(params)
  refs = [ref.Muon((24, 40)) for _ in range(3)]
  for t in range(3):
    g = _grads(t, shapes)
    u, state = tx.update(g, state)
    for i in range(3):
      want = refs[i](g["stack"][i])
      _assert_rel_close(u["stack"][i], want, 1e-4, f"slice {i}")
  # the same via a function of the path
  tx2 = om.scale_by_muon(batch_axes=lambda path, leaf: (0,) if leaf.ndim == 3 else ())
  u2, _ = tx2.update(_grads(0, shapes), tx2.init(params))
  u1, _ = om.scale_by_muon(batch_axes=(0,)).update(_grads(0, shapes),
                                                   tx2.init(params))
  np.testing.assert_array_equal(u1["stack"], u2["stack"])


@pytest.mark.slow
@pytest.mark.parametrize("alias", sweep([om.muon, om.adamuon, om.mommuon,
                                         om.ogsignmuon, om.normuon]))
def test_inject_hyperparams_matches_plain_alias(alias):
  params = _params()
  sched = optax.linear_schedule(0.02, 0.01, 10)
  plain = alias(sched, weight_decay=0.01)
  injected = optax.inject_hyperparams(alias, static_args=om.static_args(alias))(
      learning_rate=sched, weight_decay=0.01)
  got = _run(injected, params, steps=3)
  want = _run(plain, params, steps=3)
  chex.assert_trees_all_close(got, want, rtol=tol(1e-5), atol=tol(1e-7))
  # the learning rate is a hyperparameter one can read and change
  state = injected.init(params)
  assert "learning_rate" in state.hyperparams


@pytest.mark.slow
@pytest.mark.parametrize("alias", sweep([om.muon, om.adamuon, om.mommuon,
                                         om.ogsignmuon, om.normuon]))
def test_bfloat16_params_under_jit(alias):
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), _params())
  params["bias"] = jnp.zeros(16, jnp.bfloat16)
  tx = alias(0.02)
  state = tx.init(params)
  grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.bfloat16), _grads(0))
  grads["bias"] = jnp.ones(16, jnp.bfloat16)
  update = jax.jit(tx.update)
  for _ in range(2):
    updates, state = update(grads, state, params)
  for k, u in updates.items():
    assert u.dtype == jnp.bfloat16, k
    assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32)))), k
  # Against the float64 reference of the same two steps from the same
  # (bfloat16) gradients, which float32 params follow to 1e-3 or better
  # (test_variant_matches_reference; the same here, to 1e-5, on the CPU):
  # what is left is the error of the bfloat16 params and updates.
  ref_cls = VARIANTS[alias.__name__][2]
  for k in ("dense", "tall", "conv"):
    variant = ref_cls(params[k].shape)
    g = np.asarray(grads[k].astype(jnp.float32), np.float64)
    for _ in range(2):
      want = -0.02 * variant(g)
    _assert_rel_close(updates[k].astype(jnp.float32), want, tol(2e-2), k)


def test_alias_routes_non_matrices_to_adamw_reference():
  """With the default labels, a bias goes through plain AdamW."""
  params = {"layer": {"kernel": np.ones((8, 16), np.float32),
                      "bias": np.ones(16, np.float32)}}
  tx = om.muon(0.02, adamw_learning_rate=1e-2, adamw_weight_decay=0.1)
  state = tx.init(params)
  p = params
  adam_state = (np.zeros(16), np.zeros(16), 0)
  want = params["layer"]["bias"].astype(np.float64)
  for t in range(3):
    g = {"layer": {"kernel": np.full((8, 16), 0.1 * (t + 1), np.float32),
                   "bias": np.linspace(-1, 1, 16).astype(np.float32) * (t + 1)}}
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
    adam_state, want = ref.adamw_step(adam_state, want, g["layer"]["bias"], 1e-2,
                                      wd=0.1)
    np.testing.assert_allclose(p["layer"]["bias"], want, rtol=1e-5, atol=1e-6)

