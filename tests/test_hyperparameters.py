"""Every out-of-range hyperparameter is a clear ValueError at construction
(or at ``init`` for what needs the params), naming the argument and value;
and the public namespace is what ``__all__`` says, its aliases all in
``om.ALIASES``."""

import inspect
import types

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_muon as om
from tests import _sweeps

ALIASES = list(_sweeps.ALIASES.values())
PARAMS = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}


def test_star_import_and_every_public_name_exists():
  namespace: dict = {}
  exec("from optax_muon import *", namespace)  # noqa: S102
  for name in om.__all__:
    assert name in namespace, name
    assert getattr(om, name) is namespace[name]


def test_registry_is_read_only_and_holds_every_public_alias():
  """om.ALIASES maps each alias's own name to it, cannot be changed, and
  misses no public alias: every function of ``__all__`` that takes a
  learning rate first and routes the rest to AdamW (``adamw_learning_rate``)."""
  assert isinstance(om.ALIASES, types.MappingProxyType)
  with pytest.raises(TypeError):
    om.ALIASES["sgd"] = optax.sgd  # type: ignore[index]
  for name, alias in om.ALIASES.items():
    assert name in om.__all__ and getattr(om, name) is alias, name
    assert alias.__name__ == name
  public = [name for name in om.__all__
            if inspect.isfunction(getattr(om, name))]
  aliases = [name for name in public
             if list(inspect.signature(getattr(om, name)).parameters)[:1]
             == ["learning_rate"]
             and "adamw_learning_rate"
             in inspect.signature(getattr(om, name)).parameters]
  assert sorted(aliases) == sorted(om.ALIASES)
  assert list(om.ALIASES)[0] == "muon"


@pytest.mark.parametrize("alias", ALIASES, ids=lambda a: a.__name__)
@pytest.mark.parametrize("kwargs, match", [
    (dict(momentum=1.5), r"momentum must be in \[0.0, 1.0\), got 1.5"),
    (dict(momentum=-0.1), r"momentum must be in \[0.0, 1.0\)"),
    (dict(ns_steps=2.5), r"ns_steps must be an int, got 2.5"),
    (dict(ns_steps=0), r"ns_steps must be >= 1, got 0"),
    (dict(mu_dtype=jnp.int8), r"mu_dtype must be a floating dtype.*int8"),
    (dict(weight_decay=-0.1), r"weight_decay must be in \[0.0, inf\]"),
    (dict(adamw_b2=1.0), r"adamw_b2 must be in \[0.0, 1.0\)"),
    (dict(adamw_weight_decay=-1.0), r"adamw_weight_decay must be in"),
    (dict(nesterov=1), r"nesterov must be a bool, got 1"),
    (dict(cautious_weight_decay="yes"), r"cautious_weight_decay must be a bool"),
    (dict(shape_scale="fro"), r"Unknown shape_scale 'fro'"),
])
def test_out_of_range_is_a_clear_error_at_construction(alias, kwargs, match):
  with pytest.raises(ValueError, match=match):
    alias(0.02, **kwargs)


@pytest.mark.parametrize("alias, kwargs, match", [
    (om.adamuon, dict(beta2=2.0), r"beta2 must be in \[0.0, 1.0\), got 2.0"),
    (om.adamuon, dict(eps=-1e-8), r"eps must be in \[0.0, inf\]"),
    (om.adamuon, dict(bias_correction=None), r"bias_correction must be a bool"),
    (om.normuon, dict(beta2=1.0), r"beta2 must be in \[0.0, 1.0\)"),
    (om.mommuon, dict(ns_rescale=1), r"ns_rescale must be a bool, got 1"),
    (om.mommuon, dict(ns_every=-1), r"ns_every must be >= 0"),
    (om.mommuon, dict(ns_every=2.0), r"ns_every must be an int"),
    (om.mommuon, dict(ns_beta=1.0), r"ns_beta must be in \[0.0, 1.0\)"),
    (om.mommuon, dict(ns_damping=-0.1), r"ns_damping must be in \[0.0, inf\]"),
    (om.mommuon, dict(ns_average="mean"), r"ns_average must be one of"),
    (om.muon, dict(ns_dtype=jnp.int32), r"ns_dtype must be a floating dtype.*int32"),
    (om.muon, dict(ns_coeffs="cubic"), r"Unknown ns_coeffs 'cubic'"),
    (om.muon, dict(tuning="fast"), r"tuning must be an optax_muon.Tuning"),
    (om.muon, dict(ns_mesh_axis=""), r"ns_mesh_axis must be a mesh axis name"),
])
def test_variant_arguments_are_checked(alias, kwargs, match):
  with pytest.raises(ValueError, match=match):
    alias(0.02, **kwargs)


def test_traced_hyperparameters_pass_unchecked():
  """Values only known while tracing are accepted as they are (optax's
  inject_hyperparams feeds arrays; the step then uses them)."""
  tx = optax.inject_hyperparams(om.adamuon, static_args=om.static_args(
      om.adamuon))(learning_rate=0.02, momentum=0.9, beta2=0.99)
  state = tx.init(PARAMS)
  updates, _ = jax.jit(tx.update)(PARAMS, state, PARAMS)
  assert jax.tree.all(jax.tree.map(lambda u: bool(jnp.all(jnp.isfinite(u))),
                                   updates))


def test_labels_function_under_inject_hyperparams_names_static_args():
  """inject_hyperparams calls any callable hyperparameter with the step
  count: the error says to name param_labels in static_args."""
  fn = lambda p: om.muon_labels(p)
  tx = optax.inject_hyperparams(om.muon)(learning_rate=0.02, param_labels=fn)
  with pytest.raises(ValueError, match="static_args.*param_labels"):
    tx.init(PARAMS)
  optax.inject_hyperparams(om.muon, static_args=om.static_args(om.muon))(
      learning_rate=0.02, param_labels=fn).init(PARAMS)


def test_batch_axes_that_do_not_fit_name_static_args():
  """A batch_axes value that leaves a Muon leaf no matrix (what a function
  turned into a schedule by inject_hyperparams gives) says how to fix it."""
  labels = {"dense": {"kernel": "muon", "bias": "adamw"}}
  tx = om.muon(0.02, batch_axes=(0,), param_labels=labels)
  with pytest.raises(ValueError, match="static_args"):
    tx.init(PARAMS)


@pytest.mark.parametrize("alias", ALIASES, ids=lambda a: a.__name__)
@pytest.mark.parametrize("cautious", [False, True])
def test_weight_decay_without_params_is_a_clear_error(alias, cautious):
  """Decay needs the params; an ``update`` without them says so (a
  ValueError, not an AttributeError from inside optax)."""
  tx = alias(0.02, weight_decay=0.1, cautious_weight_decay=cautious)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match="params"):
    tx.update(PARAMS, state)
