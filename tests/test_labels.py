"""Routing: muon_labels, label validation, and the errors users see.

Every label / routing / leaf / ``batch_axes`` error of the aliases and the
``scale_by_*`` transforms is tested here (device-mesh errors are in
tests/test_sharding.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optax_muon as om
from tests import _flax_compat
from tests._sweeps import ALIASES


def _tree():
  return {
      "embed": {"embedding": np.zeros((50, 8), np.float32)},
      "blocks": [{"attn": {"kernel": np.zeros((8, 24), np.float32),
                           "bias": np.zeros(24, np.float32)},
                  "norm": {"scale": np.ones(8, np.float32)}}],
      "conv": {"kernel": np.zeros((3, 3, 4, 8), np.float32)},
      "lm_head": {"kernel": np.zeros((8, 50), np.float32)},
      "classifier": {"kernel": np.zeros((8, 10), np.float32)},
      "temperature": np.float32(1.0),
  }


def test_default_rule():
  labels = om.muon_labels(_tree())
  assert labels["embed"]["embedding"] == "adamw"
  assert labels["blocks"][0]["attn"]["kernel"] == "muon"
  assert labels["blocks"][0]["attn"]["bias"] == "adamw"
  assert labels["blocks"][0]["norm"]["scale"] == "adamw"
  assert labels["conv"]["kernel"] == "muon"
  assert labels["lm_head"]["kernel"] == "adamw"
  assert labels["classifier"]["kernel"] == "adamw"
  assert labels["temperature"] == "adamw"


def test_extend_and_force_the_rule():
  labels = om.muon_labels(
      _tree(), adamw_names=om.EMBEDDING_NAMES + om.HEAD_NAMES + ("conv",))
  assert labels["conv"]["kernel"] == "adamw"
  assert labels["blocks"][0]["attn"]["kernel"] == "muon"
  labels = om.muon_labels(_tree(), muon_names=("lm_head",))
  assert labels["lm_head"]["kernel"] == "muon"
  assert labels["embed"]["embedding"] == "adamw"


def test_nnx_module_labels():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(20, 8, rngs=rngs)
      self.hidden = nnx.Linear(8, 16, rngs=rngs)
      self.norm = nnx.LayerNorm(16, rngs=rngs)
      self.head = nnx.Linear(16, 20, rngs=rngs)

  state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
  flat = dict(nnx.to_flat_state(om.muon_labels(_flax_compat.pure(state))))
  assert flat[("embed", "embedding")] == "adamw"
  assert flat[("hidden", "kernel")] == "muon"
  assert flat[("hidden", "bias")] == "adamw"
  assert flat[("norm", "scale")] == "adamw"
  assert flat[("head", "kernel")] == "adamw"


# ----------------------------------------------------------------- errors --
# Bad labels, leaves Muon cannot take, and batch_axes that do not fit: each
# error names the leaf's path, the bad value and the fix.


P2 = {"layer": {"kernel": jnp.zeros((4, 6)), "bias": jnp.zeros((6,))}}


def test_unknown_label_names_leaf_and_label():
  tree = _tree()
  labels = om.muon_labels(tree)
  labels["conv"]["kernel"] = "sgd"
  tx = om.muon(param_labels=labels)
  with pytest.raises(ValueError, match=r"'sgd'.*'conv/kernel'.*'muon' or 'adamw'"):
    tx.init(tree)


def test_vector_routed_to_muon_names_leaf():
  tree = _tree()
  labels = om.muon_labels(tree)
  labels["blocks"][0]["attn"]["bias"] = "muon"
  with pytest.raises(ValueError, match=r"blocks/0/attn/bias.*shape \(24,\).*AdamW"):
    om.muon(param_labels=labels).init(tree)
  with pytest.raises(ValueError, match=r"'b'.*shape \(3,\)"):
    om.scale_by_muon().init({"b": jnp.zeros(3)})


def test_label_tree_that_does_not_match():
  tree = _tree()
  labels = om.muon_labels(tree)
  del labels["classifier"]
  with pytest.raises(ValueError, match=r"does not match.*classifier"):
    om.muon(param_labels=labels).init(tree)


def test_batch_axes_that_do_not_fit():
  tree = {"w": jnp.zeros((2, 8, 8))}
  with pytest.raises(ValueError, match=r"batch_axes \(3,\).*'w'"):
    om.scale_by_muon(batch_axes=(3,)).init(tree)
  with pytest.raises(ValueError, match=r"fewer than 2 matrix axes.*'w'"):
    om.scale_by_muon(batch_axes=(0, 1)).init(tree)


@pytest.mark.parametrize("name", ALIASES)
def test_unknown_label_names_leaf_and_fix(name):
  labels = {"layer": {"kernel": "muon", "bias": "adam"}}
  with pytest.raises(ValueError, match=r"'adam'.*'layer/bias'.*'muon' or "
                     r"'adamw'"):
    ALIASES[name](param_labels=labels).init(P2)


@pytest.mark.parametrize("name", ALIASES)
def test_vector_routed_to_muon_names_leaf_and_fix(name):
  labels = {"layer": {"kernel": "muon", "bias": "muon"}}
  with pytest.raises(ValueError, match=r"'layer/bias'.*\(6,\).*AdamW"):
    ALIASES[name](param_labels=labels).init(P2)


def test_scale_by_variant_rejects_vector_with_path():
  for scale_by in (om.scale_by_muon, om.scale_by_adamuon, om.scale_by_mommuon,
                   om.scale_by_ogsignmuon, om.scale_by_normuon):
    with pytest.raises(ValueError, match=r"'layer/bias'.*2 or more dims"):
      scale_by().init(P2)


@pytest.mark.parametrize("labels, only", [
    ({"layer": {"kernel": "muon"}}, r"only in the params \['layer/bias'\]"),
    ({"layer": {"kernel": "muon", "bias": "adamw", "extra": "adamw"}},
     r"only in the labels \['layer/extra'\]"),
    (["muon", "adamw"], r"only in the params \['layer/bias', 'layer/kernel'\]"),
])
def test_label_tree_mismatch_names_leaves_and_fix(labels, only):
  for as_fn in (False, True):
    param_labels = (lambda p, labels=labels: labels) if as_fn else labels
    with pytest.raises(ValueError, match=only + r".*om.muon_labels"):
      om.muon(param_labels=param_labels).init(P2)


@pytest.mark.parametrize("spec, msg", [
    (3, r"batch_axes 3 does not fit the leaf at 'layer/kernel' \(2 dims\)"),
    ((0, 0), r"repeats an axis for the leaf at 'layer/kernel'"),
    (0, r"leaves fewer than 2 matrix axes of the leaf at 'layer/kernel'"),
    ("a", r"does not fit the leaf at 'layer/kernel'"),
    (lambda path, leaf: -3, r"batch_axes -3 does not fit .*'layer/kernel'"),
])
def test_batch_axes_that_do_not_fit_name_leaf(spec, msg):
  params = {"layer": {"kernel": jnp.zeros((4, 6))}}
  # The aliases' default labels send a leaf that batch_axes leaves with
  # fewer than 2 matrix axes to AdamW (like a bias); a transform given it
  # directly cannot.
  makers = (om.scale_by_muon, om.scale_by_normuon) if spec == 0 else (
      om.muon, om.scale_by_muon, om.scale_by_normuon)
  for make in makers:
    with pytest.raises(ValueError, match=msg):
      make(batch_axes=spec).init(params)
  if spec == 0:
    assert om.muon_labels(params, batch_axes=0) == {"layer": {"kernel": "adamw"}}


def test_shared_batch_axes_error_points_to_per_leaf_function():
  params = {"blocks": jnp.zeros((2, 4, 6)), "proj": jnp.zeros((4, 6))}
  with pytest.raises(ValueError, match=r"'proj'.*batch_axes=lambda path, "
                     r"leaf"):
    om.muon(batch_axes=0, param_labels={"blocks": "muon", "proj": "muon"}
            ).init(params)
  # The suggested fix works.
  om.muon(batch_axes=lambda p, x: 0 if x.ndim == 3 else None).init(params)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_non_floating_leaf_routed_to_muon(dtype):
  name = jnp.dtype(dtype).name
  params = {"table": jnp.zeros((4, 6), dtype), "w": jnp.zeros((4, 6))}
  for tx in (om.muon(), om.normuon(param_labels={"table": "muon",
                                                 "w": "muon"})):
    with pytest.raises(ValueError, match=rf"'table' of dtype {name}.*"
                       r"floating-point.*'adamw'"):
      tx.init(params)
  with pytest.raises(ValueError, match=rf"'table' of dtype {name}"):
    om.scale_by_adamuon().init(params)
  # NumPy leaves too.
  tree = {"ids": np.zeros((4, 4), dtype)}
  with pytest.raises(ValueError, match=rf"'ids' of dtype {name}.*floating"):
    om.muon(param_labels={"ids": "muon"}).init(tree)


def test_error_paths_of_nnx_state():
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs)])

  model = Net(nnx.Rngs(0))
  labels = lambda params: jax.tree.map(lambda _: "muon", params)
  with pytest.raises(ValueError, match=r"'layers/0/bias'"):
    nnx.Optimizer(model, om.muon(param_labels=labels), wrt=nnx.Param)


# ------------------------------------------------------------- equivalence --


def test_label_function_and_tree_are_equivalent():
  tree = _tree()
  tree["blocks"][0]["attn"]["kernel"] = np.ones((8, 24), np.float32)
  grads = jax.tree.map(lambda x: np.ones_like(x) * 0.5, tree)
  by_fn = om.muon(param_labels=om.muon_labels)
  by_tree = om.muon(param_labels=om.muon_labels(tree))
  u1, _ = by_fn.update(grads, by_fn.init(tree), tree)
  u2, _ = by_tree.update(grads, by_tree.init(tree), tree)
  jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_batch_axes_tree_is_the_per_leaf_function():
  # A tree like the params (None or axes per leaf) is read by path, as the
  # equivalent function is.
  params = {"stack": {"kernel": np.zeros((3, 4, 6), np.float32),
                      "bias": np.zeros((3, 6), np.float32)},
            "proj": {"kernel": np.zeros((4, 6), np.float32)}}
  tree = {"stack": {"kernel": 0, "bias": 0}, "proj": {"kernel": None}}
  by_fn = om.describe(params, batch_axes=om.stacked("stack"))
  assert om.describe(params, batch_axes=tree) == by_fn
  row = next(r for r in by_fn.splitlines() if r.startswith("stack/kernel"))
  assert row.split()[5:8] == ["4", "x", "6"] and "0:3" in row
  with pytest.raises(ValueError, match=r"batch_axes 5 does not fit the leaf "
                     r"at 'stack/kernel'"):
    om.scale_by_muon(batch_axes={"stack": {"kernel": 5, "bias": None},
                                 "proj": {"kernel": None}}).init(params)


def test_partials_are_functions_and_callable_trees_are_trees():
  params = {"w": np.zeros((4, 6), np.float32), "b": np.zeros(6, np.float32)}
  fn = jax.tree_util.Partial(om.muon_labels, vocab_size=None)
  assert om.muon(param_labels=fn).init(params) is not None

  @jax.tree_util.register_pytree_node_class
  class CallableTree(dict):  # a pytree node with a __call__, like eqx.Module
    def __call__(self, x):
      return x

    def tree_flatten(self):
      return tuple(self.values()), tuple(self.keys())

    @classmethod
    def tree_unflatten(cls, keys, values):
      return cls(zip(keys, values))

  params = CallableTree(params)
  labels = CallableTree(w="adamw", b="adamw")
  tx = om.muon(param_labels=labels)
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # All AdamW: the first Adam step is -lr * sign(g) (bias-corrected moments).
  np.testing.assert_allclose(updates["w"], -3e-4 * np.ones((4, 6)), rtol=1e-4)
