"""``om.infer_layout``: each primitive and transform it follows, on a small
function whose expected axes are written by hand; the ``Layout`` value;
``layout=`` on every optimizer; ``describe``'s evidence; every model of the
zoo (tests/_models.py) gets its hand-derived layout, and trains with it.

The expected axes come from the functions' own code (which axis each
``einsum`` / ``@`` contracts), never from the library.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import re
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests import _models
from tests._sweeps import ALIASES

B, D, F, H, K, L = 3, 8, 12, 2, 4, 2
VARIANTS = (om.scale_by_muon, om.scale_by_adamuon, om.scale_by_mommuon,
            om.scale_by_normuon, om.scale_by_ogsignmuon)


def _z(*shape, dtype=jnp.float32):
  return jnp.zeros(shape, dtype)


X = _z(B, D)


def _axes(layout, path):
  leaf = layout[path]
  return leaf.label, leaf.fan_in, leaf.fan_out, leaf.batch


def _muon(fan_in, fan_out, batch=()):
  return ("muon", tuple(fan_in), tuple(fan_out), tuple(batch))


ADAMW = ("adamw", (), (), ())


def _check(fn, params, expected, *args, no_fallbacks=True, **kwargs):
  layout = om.infer_layout(fn, params, *args, **kwargs)
  for path, want in expected.items():
    assert _axes(layout, path) == want, (path, layout[path])
  if no_fallbacks:
    assert layout.fallbacks == {}
  return layout


# ----------------------------------------------------- one primitive each ----
# Every function ends with a head ``h`` (D -> 2) so that the matrix under
# test is a hidden one; ``h`` itself is AdamW's (its product is the output).

HEAD = _z(D, 2)


def _with_head(w):
  return {"w": w, "h": HEAD}


def test_dot_general_in_out():
  _check(lambda p, x: jnp.tanh(x @ p["w"]) @ p["h"], _with_head(_z(D, D)),
         {"w": _muon([0], [1]), "h": ADAMW}, X)


def test_transpose_out_in():
  # PyTorch / Equinox layout (out, in): y = x W^T contracts axis 1.
  _check(lambda p, x: (x @ p["w"].T) @ p["h"], _with_head(_z(D, D)),
         {"w": _muon([1], [0])}, X)


def test_reshape_split():
  # (D, H*K) split into heads after the weight is read: both parts free.
  def fn(p, x):
    w = p["w"].reshape(D, H, K)
    return jnp.einsum("bd,dhk->bhk", x, w).reshape(B, H * K) @ p["h"]
  _check(fn, {"w": _z(D, H * K), "h": _z(H * K, 2)}, {"w": _muon([0], [1])},
         X)


def test_reshape_merge():
  # An einsum-style (D, H, K) weight used as one (D, H*K) matrix.
  def fn(p, x):
    return (x @ p["w"].reshape(D, H * K)) @ p["h"]
  _check(fn, {"w": _z(D, H, K), "h": _z(H * K, 2)},
         {"w": _muon([0], [1, 2])}, X)


def test_reshape_that_mixes_axes_falls_back():
  def fn(p, x):
    return (x[:, :6] @ p["w"].reshape(6, 4)) @ p["h"][:4]
  layout = om.infer_layout(fn, {"w": _z(4, 6), "h": HEAD}, X)
  assert layout["w"].evidence == "names"
  assert "reshaped (4, 6) -> (6, 4)" in layout["w"].reason
  assert _axes(layout, "w") == _muon([0], [1])  # the default view


def test_dot_general_batch_axes_are_batch():
  # Per-head weights (H, D/H, K) on per-head inputs: heads are dot_general
  # batch dims of both operands.
  def fn(p, x):
    q = jnp.einsum("bhd,hdk->bhk", x.reshape(B, H, D // H), p["w"])
    return q.reshape(B, H * K) @ p["h"]
  _check(fn, {"w": _z(H, D // H, K), "h": _z(H * K, 2)},
         {"w": _muon([1], [2], [0])}, X)


def test_an_own_free_axis_taken_apart_after_the_product_is_batch():
  # Gemma's kv_einsum 'BSD,CKDH->CBSKH', then `k, v = ...`: C indexes two
  # matrices. A fused axis split into chunks (GPT-2's c_attn (3d) by
  # jnp.split) is one fan-out: no axis of the weight separates the parts.
  def fn(p, x):
    k, v = jnp.einsum("bd,cdh->cbh", x, p["kv"])
    q, r, s = jnp.split(x @ p["fused"], 3, axis=-1)
    gate = jnp.einsum("bd,nfd->nbf", x, p["gating"])
    h = jax.nn.gelu(gate[0]) * gate[1]
    return (jnp.tanh(k + v) + q + r + s) @ p["h"] + h @ p["h2"]
  params = {"kv": _z(2, D, D), "fused": _z(D, 3 * D), "gating": _z(2, F, D),
            "h": HEAD, "h2": _z(F, 2)}
  _check(fn, params, {"kv": _muon([1], [2], [0]),
                      "fused": _muon([0], [1]),
                      "gating": _muon([2], [1], [0])}, X)


def test_vmap_over_a_weight_stack():
  # vmap over (inputs, weights): the stacked axis becomes a batch dim.
  def fn(p, x):
    xs = jnp.stack([x] * L)
    y = jax.vmap(lambda xi, wi: xi @ wi)(xs, p["w"])
    return y.sum(0) @ p["h"]
  _check(fn, _with_head(_z(L, D, D)), {"w": _muon([1], [2], [0])}, X)


def test_scan_over_stacked_layers():
  def fn(p, x):
    x, _ = jax.lax.scan(lambda c, w: (jnp.tanh(c @ w), None), x, p["w"])
    return x @ p["h"]
  _check(fn, _with_head(_z(L, D, D)), {"w": _muon([1], [2], [0])}, X)


def test_scan_follows_a_weight_in_the_carry():
  # The weight ``w`` rides in the carry unchanged; the stack ``v`` has its
  # layer axis second (MaxText's param_scan_axis=1): the scan slices it off.
  def fn(p, x):
    def body(c, v):
      h, w = c
      return (jnp.tanh(h @ w) + h @ v, w), None
    (h, _), _ = jax.lax.scan(body, (x, p["w"]), jnp.moveaxis(p["v"], 1, 0))
    return h @ p["h"]
  params = {"w": _z(D, D), "v": _z(D, L, D), "h": HEAD}
  _check(fn, params, {"w": _muon([0], [1]), "v": _muon([0], [2], [1])}, X)


def test_jit_and_closed_call():
  def fn(p, x):
    inner = jax.jit(lambda x, w: jnp.tanh(x @ w))
    return jax.jit(lambda q, x: inner(x, q["w"]) @ q["h"])(p, x)
  _check(fn, _with_head(_z(D, F)) | {"h": _z(F, 2)},
         {"w": _muon([0], [1]), "h": ADAMW}, X)


def test_remat():
  def fn(p, x):
    return jax.checkpoint(lambda x: jnp.tanh(x @ p["w"]))(x) @ p["h"]
  _check(fn, _with_head(_z(D, D)), {"w": _muon([0], [1])}, X)


def test_custom_jvp_and_custom_vjp():
  @jax.custom_jvp
  def jvp_matmul(x, w):
    return x @ w
  jvp_matmul.defjvp(lambda primals, tangents: (
      jvp_matmul(*primals), tangents[0] @ primals[1]))

  @jax.custom_vjp
  def vjp_matmul(x, w):
    return x @ w.T
  vjp_matmul.defvjp(lambda x, w: (vjp_matmul(x, w), (x, w)),
                    lambda res, g: (g @ res[1], g.T @ res[0]))

  def fn(p, x):
    return vjp_matmul(jvp_matmul(x, p["a"]), p["b"]) @ p["h"]
  _check(fn, {"a": _z(D, F), "b": _z(D, F), "h": HEAD},
         {"a": _muon([0], [1]), "b": _muon([1], [0])}, X)


def test_cond_branches():
  def fn(p, x):
    y = jax.lax.cond(x.sum() > 0, lambda x: jnp.tanh(x @ p["w"]),
                     lambda x: jax.nn.relu(x @ p["w"]), x)
    return y @ p["h"]
  _check(fn, _with_head(_z(D, D)), {"w": _muon([0], [1])}, X)


def test_while_body():
  def fn(p, x):
    def body(c):
      i, h = c
      return i + 1, jnp.tanh(h @ p["w"].T)
    _, h = jax.lax.while_loop(lambda c: c[0] < x.shape[0], body, (0, x))
    return h @ p["h"]
  _check(fn, _with_head(_z(F, D)) | {"w": _z(D, D)}, {"w": _muon([1], [0])},
         X)


def test_broadcast_in_dim_and_convert_element_type():
  def fn(p, x):
    w = jnp.broadcast_to(p["w"].astype(jnp.bfloat16), (B, D, F))
    y = jnp.einsum("bd,bdf->bf", x.astype(jnp.bfloat16), w)
    return y.astype(jnp.float32) @ p["h"]
  _check(fn, {"w": _z(D, F), "h": _z(F, 2)}, {"w": _muon([0], [1])}, X)


def test_squeeze_and_expand_dims():
  def fn(p, x):
    w = jnp.expand_dims(jnp.squeeze(p["w"], 0), 0)  # (1, D, F) again
    y = jax.lax.dot_general(x[None], w, (((2,), (1,)), ((0,), (0,))))
    return y[0] @ p["h"]
  # The size-1 axis 0 is in neither side: a batch axis of one matrix.
  _check(fn, {"w": _z(1, D, F), "h": _z(F, 2)},
         {"w": _muon([1], [2], [0])}, X)


def test_slice_dynamic_slice_and_dynamic_update_slice():
  def fn(p, x, i):
    w = jax.lax.dynamic_slice_in_dim(p["stack"], i, 1)[0]       # (D, D)
    w = jax.lax.dynamic_update_slice(w, jnp.zeros((1, D)), (i, 0))
    return (jnp.tanh(x @ w) @ p["w"][:, :D]) @ p["h"]
  params = {"stack": _z(L, D, D), "w": _z(D, F), "h": HEAD}
  _check(fn, params, {"stack": _muon([1], [2], [0]), "w": _muon([0], [1])},
         X, jnp.int32(1))


def test_conv_general_dilated():
  # Flax layout HWIO: window and input features contracted.
  def fn(p, img):
    y = jax.lax.conv_general_dilated(img, p["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.mean((1, 2)) @ p["h"][:F]
  _check(fn, {"w": _z(3, 3, 2, F), "h": _z(D + F, 2)},
         {"w": _muon([0, 1, 2], [3])}, _z(B, 5, 5, 2))


def test_gather_elementwise_scalar_head_and_tied_table():
  def fn(p, tokens):
    x = p["emb"][tokens] * p["scale"] + p["bias"]
    x = jnp.tanh(x @ p["w"]) * p["temperature"]
    return x @ p["emb"].T, x @ p["head"]     # tied head, untied head
  params = {"emb": _z(10, D), "scale": _z(D), "bias": _z(D), "w": _z(D, D),
            "temperature": _z(), "head": _z(D, 3)}
  layout = _check(fn, params, {
      "emb": ADAMW, "scale": ADAMW, "bias": ADAMW, "w": _muon([0], [1]),
      "temperature": ADAMW, "head": ADAMW}, jnp.zeros((B,), jnp.int32))
  assert "tied" in layout["emb"].evidence
  assert layout["emb"].evidence.startswith("gather")
  assert "(head)" in layout["head"].evidence
  assert layout["scale"].evidence.startswith("mul")
  assert layout["temperature"].evidence == "scalar"


def test_inconsistent_use_falls_back_with_the_reason():
  def fn(p, x):
    return (jnp.tanh(x @ p["w"]) @ p["w"].T) @ p["h"]
  params = {"blocks": {"mlp": {"kernel": _z(D, D)}}, "h": HEAD}
  fn2 = lambda p, x: fn({"w": p["blocks"]["mlp"]["kernel"], "h": p["h"]}, x)
  layout = om.infer_layout(fn2, params, X)
  leaf = layout["blocks/mlp/kernel"]
  assert leaf.evidence == "names"
  assert "products disagree" in leaf.reason
  # The name-based default: muon_labels and the default matrix view.
  assert om.muon_labels(params)["blocks"]["mlp"]["kernel"] == leaf.label
  assert (leaf.fan_in, leaf.fan_out) == ((0,), (1,))
  assert layout.fallbacks == {"blocks/mlp/kernel": leaf.reason}


def test_unused_leaf_and_concatenate_fall_back():
  def fn(p, x):
    w = jnp.concatenate([p["a"], p["b"]], axis=1)
    return (x @ w) @ p["h"]
  params = {"a": _z(D, 1), "b": _z(D, 1), "unused": _z(D, D), "h": _z(2, 2)}
  layout = om.infer_layout(fn, params, X)
  assert layout["unused"].reason == "not used by the function"
  assert "concatenate" in layout["a"].reason
  assert set(layout.fallbacks) == {"a", "b", "unused"}


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["kernel", "bias"], meta_fields=[])
@dataclasses.dataclass
class _Dense:
  """A custom pytree node."""
  kernel: Any
  bias: Any


def test_none_leaves_custom_nodes_static_args_and_abstract_params():
  def fn(p, x, *, activation="tanh", scale=2.0):
    act = getattr(jnp, activation)
    y = act(x @ p["layer"].kernel + p["layer"].bias) * scale
    return y @ p["head"].kernel
  params = {"layer": _Dense(_z(D, F), _z(F)), "head": _Dense(_z(F, 2), None),
            "dropout_rng": None}
  expected = {"layer/kernel": _muon([0], [1]), "layer/bias": ADAMW,
              "head/kernel": ADAMW}
  layout = _check(fn, params, expected, X, activation="tanh", scale=3.0)
  assert set(layout) == set(expected)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params)
  assert om.infer_layout(fn, abstract, X) == layout
  labels = layout.labels(params)
  assert labels["layer"].kernel == "muon" and labels["head"].bias is None


def test_a_function_that_does_not_trace_is_a_value_error():
  with pytest.raises(ValueError, match="could not trace"):
    om.infer_layout(lambda p, x: p["missing"] @ x, {"w": _z(D, D)}, X)


# -------------------------------------------------------- the Layout value ----


@pytest.fixture(scope="module")
def mlp():
  params = {"emb": _z(10, D), "up": {"kernel": _z(D, F), "bias": _z(F)},
            "down": {"kernel": _z(F, D)}, "head": {"kernel": _z(D, 10)}}

  def fn(p, tokens):
    x = p["emb"][tokens]
    x = x + jax.nn.relu(x @ p["up"]["kernel"] + p["up"]["bias"]) @ p[
        "down"]["kernel"]
    return x @ p["head"]["kernel"]
  tokens = jnp.zeros((B, 5), jnp.int32)
  return params, fn, tokens, om.infer_layout(fn, params, tokens)


def test_layout_is_a_value(mlp):
  params, fn, tokens, layout = mlp
  again = om.infer_layout(fn, params, tokens)
  assert again == layout and hash(again) == hash(layout)
  restored = pickle.loads(pickle.dumps(layout))
  assert restored == layout and restored["up/kernel"] == layout["up/kernel"]
  assert len(layout) == 5 and sorted(layout) == list(layout)
  assert layout.labels(params) == {
      "emb": "adamw", "up": {"kernel": "muon", "bias": "adamw"},
      "down": {"kernel": "muon"}, "head": {"kernel": "adamw"}}
  axes = layout.matrix_axes(params)
  assert axes["up"]["kernel"] == om.MatrixAxes((0,), (1,))
  assert axes["head"]["kernel"] is None and axes["up"]["bias"] is None
  with pytest.raises(dataclasses.FrozenInstanceError):
    layout.leaves = ()


def test_replace_overrides_one_leaf(mlp):
  params, _, _, layout = mlp
  new = layout.replace("head/kernel", label="muon", fan_in=0, fan_out=1)
  assert new != layout and new["head/kernel"].evidence == "replace"
  assert new.labels(params)["head"]["kernel"] == "muon"
  assert new["up/kernel"] == layout["up/kernel"]
  back = new.replace(("head", "kernel"), label="adamw")
  assert back.labels(params) == layout.labels(params)
  swapped = layout.replace("down/kernel", fan_in=1, fan_out=0)
  assert swapped.matrix_axes(params)["down"]["kernel"] == om.MatrixAxes(
      (1,), (0,))
  for bad, match in [(dict(fan_in=0, fan_out=0), "share an axis"),
                     (dict(fan_in=2, fan_out=0), "axis indices"),
                     (dict(label="sgd"), "'muon' or 'adamw'"),
                     (dict(label="adamw", fan_in=0), "no matrix axes")]:
    with pytest.raises(ValueError, match=match):
      layout.replace("down/kernel", **bad)
  with pytest.raises(ValueError, match="does not have"):
    layout.replace("nope", label="adamw")


def test_layout_of_other_params_is_a_value_error(mlp):
  params, _, _, layout = mlp
  with pytest.raises(ValueError, match="'extra'"):
    layout.labels(params | {"extra": _z(2, 2)})
  with pytest.raises(ValueError, match="shape"):
    layout.labels(params | {"emb": _z(11, D)})


# ------------------------------------------------- layout= on the optimizers ----


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_layout_with_routing_arguments_is_a_value_error(name, mlp):
  alias = ALIASES[name]
  layout = mlp[3]
  for extra in ({"param_labels": {}}, {"batch_axes": 0},
                {"matrix_axes": om.per_head}):
    (arg,) = extra
    with pytest.raises(ValueError, match=f"om.{name} got layout= together "
                       f"with {arg}"):
      alias(0.02, layout=layout, **extra)
  with pytest.raises(ValueError, match="matrix_axes, param_labels"):
    alias(0.02, layout=layout, param_labels={}, matrix_axes=om.per_head)
  with pytest.raises(ValueError, match="om.infer_layout"):
    alias(0.02, layout={"w": "muon"})


@pytest.mark.parametrize("scale", VARIANTS, ids=lambda f: f.__name__)
def test_scale_by_layout_with_matrix_axes_is_a_value_error(scale, mlp):
  with pytest.raises(ValueError, match=f"{scale.__name__} got layout= "
                     "together with batch_axes, matrix_axes"):
    scale(layout=mlp[3], matrix_axes=om.per_head, batch_axes=0)


@pytest.mark.parametrize("scale", (om.scale_by_muon, om.scale_by_normuon),
                         ids=lambda f: f.__name__)
def test_scale_by_views_leaves_as_the_layout_says(scale):
  # A (out, in) weight, as x @ W.T uses it: its update is the transpose of
  # the update of W.T seen as an (in, out) matrix (NorMuon normalises per
  # output neuron, so it is wrong unless the fan-out is axis 0).
  w = jnp.asarray(np.random.default_rng(0).normal(size=(F, D)), jnp.float32)
  fn = lambda p, x: jnp.tanh(x @ p["w"].T) @ p["h"]
  lay = om.infer_layout(fn, {"w": w, "h": _z(F, 2)}, X)
  assert (lay["w"].fan_in, lay["w"].fan_out) == ((1,), (0,))
  tx, ref = scale(layout=lay), scale()
  update = jax.jit(lambda tx, g: tx.update(g, tx.init(g))[0],
                   static_argnums=0)
  u, u_ref = update(tx, {"w": w}), update(ref, {"w": w.T})
  chex.assert_trees_all_close(u["w"], u_ref["w"].T, rtol=1e-5, atol=1e-6)


def test_alias_routes_by_the_layout(mlp):
  params, _, _, layout = mlp
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape),
                                              jnp.float32), params)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape),
                                             jnp.float32), params)
  tx = om.muon(0.02, layout=layout)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # AdamW's first step is -lr * sign(g) (to 1e-8 / |g|) on its leaves.
  for leaf, g in ((updates["emb"], grads["emb"]),
                  (updates["head"]["kernel"], grads["head"]["kernel"]),
                  (updates["up"]["bias"], grads["up"]["bias"])):
    np.testing.assert_allclose(leaf, -3e-4 * np.sign(g), rtol=1e-4)
  # Muon's: -lr * sqrt(max(1, fan_out / fan_in)) * polar(g), the polar
  # factor U V^T from NumPy's SVD (5 quintic steps: singular values within
  # [0.68, 1.13] of 1, Jordan's quintic).
  for key, scale in (("up", np.sqrt(F / D)), ("down", 1.0)):
    g = np.asarray(grads[key]["kernel"], np.float64)
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    got = np.asarray(updates[key]["kernel"]) / (-0.02 * scale)
    s = np.linalg.svd(got, compute_uv=False)
    assert 0.6 < s.min() and s.max() < 1.2, (key, s)
    cos = np.sum(got * (u @ vt)) / np.linalg.norm(got) / np.linalg.norm(u @ vt)
    assert cos > 0.95, (key, cos)


def test_inject_hyperparams_takes_layout_without_static_args(mlp):
  # A Layout is not callable, so inject_hyperparams keeps it as it is.
  params, _, _, layout = mlp
  assert "layout" not in om.static_args(om.muon)
  grads = jax.tree.map(jnp.ones_like, params)

  def first_update(tx):
    return jax.jit(tx.update)(grads, tx.init(params), params)[0]
  # optax's own convention: only ns_steps static; layout needs no naming.
  injected = optax.inject_hyperparams(om.muon, static_args=("ns_steps",))(
      learning_rate=0.02, layout=layout)
  chex.assert_trees_all_close(first_update(injected),
                              first_update(om.muon(0.02, layout=layout)),
                              rtol=1e-6)


def test_describe_prints_the_evidence(mlp):
  params, _, _, layout = mlp
  bent = layout.replace("down/kernel", label="adamw")
  text = om.describe(params, layout=bent)
  header, *rows = text.splitlines()
  assert header.split()[-1] == "evidence"
  row = {r.split()[0]: r for r in rows}
  assert re.search(r"muon .* dot_general at \S+test_layout\.py:\d+", row[
      "up/kernel"])
  assert re.search(r"adamw .* gather at \S+test_layout\.py:\d+", row["emb"])
  assert row["down/kernel"].endswith("replace")
  assert "(head)" in row["head/kernel"]
  with pytest.raises(ValueError, match="describe got layout= together"):
    om.describe(params, layout=layout, batch_axes=0)
  # A fallback's reason is printed below the table.
  fn = lambda p, x: (x @ p["w"]) @ p["w"].T
  lay = om.infer_layout(fn, {"w": _z(D, D)}, X)
  assert "names: w: products disagree" in om.describe({"w": _z(D, D)},
                                                       layout=lay)


# ------------------------------------------------------------------- zoo ----


@pytest.fixture(scope="module", params=sorted(_models.CASES))
def case(request):
  return _models.CASES[request.param]()


def test_zoo_layout_is_the_models_own(case):
  layout = om.infer_layout(case.forward, case.params, *case.args)
  assert set(layout) == set(case.expected)
  wrong = {}
  for path, exp in case.expected.items():
    got = layout[path]
    want = (exp.label, tuple(sorted(exp.fan_in)), tuple(sorted(exp.fan_out)))
    if (got.label, got.fan_in, got.fan_out) != want:
      wrong[path] = (want, got)
  assert not wrong, wrong
  assert layout.fallbacks == {}


def _loss_falls(case, dtype=jnp.float32, steps=25):
  params = jax.tree.map(lambda x: x.astype(dtype), case.params)
  layout = om.infer_layout(case.forward, params, *case.args)
  tx = om.muon(0.02, layout=layout, adamw_learning_rate=3e-3)
  loss = lambda p: case.loss(p).astype(jnp.float32)

  @jax.jit
  def step(p, s):
    value, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, value

  state, first = tx.init(params), float(loss(params))
  for _ in range(steps):
    params, state, value = step(params, state)
  last = float(loss(params))
  assert np.isfinite(last) and last < 0.9 * first, (first, last)
  assert jax.tree.leaves(params)[0].dtype == dtype


FAST_TRAIN = ("equinox-mlp",)


@pytest.mark.parametrize("name", FAST_TRAIN)
def test_zoo_trains_with_its_layout(name):
  _loss_falls(_models.CASES[name]())


def test_zoo_trains_with_its_layout_bfloat16():
  _loss_falls(_models.CASES["equinox-mlp"](), jnp.bfloat16)


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(set(_models.CASES) - set(FAST_TRAIN)))
def test_zoo_trains_with_its_layout_long(name):
  """Each model's compile takes 5-15 s on 2 CPU cores: CI's integration
  tier."""
  _loss_falls(_models.CASES[name]())


@pytest.mark.integration
def test_zoo_transformer_trains_with_its_layout_bfloat16():
  _loss_falls(_models.CASES["equinox-scan"](), jnp.bfloat16)


# -------------------------------------------- recipes of the routing guide ----

ROUTING = Path(__file__).resolve().parents[1] / "docs" / "guide" / "routing.md"


def _recipe_blocks():
  """``name -> code`` of the routing guide's blocks that start
  ``# recipe: name``."""
  text = ROUTING.read_text()
  blocks = {}
  for m in re.finditer(r"```python\n(# recipe: ([\w-]+)\n.*?)```", text,
                       re.S):
    blocks[m.group(2)] = m.group(1)
  return blocks, text


def _run_recipe(name, **namespace):
  blocks, _ = _recipe_blocks()
  assert name in blocks, f"{ROUTING} has no '# recipe: {name}' block"
  ns = {"jax": jax, "jnp": jnp, "om": om, "optax": optax} | namespace
  exec(compile(blocks[name], f"routing.md-{name}", "exec"), ns)
  layout = ns["layout"]
  assert isinstance(layout, om.Layout) and layout.fallbacks == {}
  return ns, layout


def test_routing_recipe_plain_function_and_describe():
  ns, layout = _run_recipe("plain")
  for n in "qkv":  # (L, N, D, H), "btd,ndh->btnh" under a scan
    assert _axes(layout, f"layers/{n}") == _muon([2], [1, 3], [0])
  assert _axes(layout, "layers/o") == _muon([1, 2], [3], [0])  # (L, N, H, D)
  assert _axes(layout, "layers/up") == _muon([2], [1], [0])    # (L, F, D).T
  assert _axes(layout, "layers/down") == _muon([2], [1], [0])
  assert _axes(layout, "layers/norm") == ADAMW
  assert _axes(layout, "embed") == ADAMW                       # tied
  _, text = _recipe_blocks()
  shown = re.search(r"```text\n(path .*? evidence\n.*?)```", text, re.S)
  assert shown, f"{ROUTING} has no describe table with an evidence column"
  norm = lambda s: [re.sub(r"at \S+:\d+:\d+", "at L", line.rstrip())
                    for line in s.strip().splitlines()]
  assert norm(shown.group(1)) == norm(om.describe(ns["params"],
                                                  layout=layout))


def test_routing_recipe_nnx():
  pytest.importorskip("flax.nnx")
  _, layout = _run_recipe("nnx")
  assert _axes(layout, "layers/0/kernel") == _muon([0], [1])
  assert layout["layers/2/kernel"].label == "adamw"  # the head


def test_routing_recipe_linen():
  _, layout = _run_recipe("linen")
  assert _axes(layout, "layers_0/kernel") == _muon([0], [1])
  assert layout["layers_2/kernel"].label == "adamw"  # the head


def test_routing_recipe_equinox():
  pytest.importorskip("equinox")
  _, layout = _run_recipe("equinox")
  assert _axes(layout, "layers/0/weight") == _muon([1], [0])
  assert layout["layers/2/weight"].label == "adamw"  # the output layer


def test_routing_recipe_hf_flax():
  pytest.importorskip("transformers")
  _, layout = _run_recipe("hf-flax")
  assert _axes(layout, "transformer/h/0/mlp/c_fc/kernel") == _muon([1], [0])
  assert layout["transformer/wte/embedding"].label == "adamw"


class _NamedArray:
  """A stand-in for Haliax's ``NamedArray``: an array and its axis names
  (static), a pytree whose one child is the array (paths end in ``/0``)."""

  def __init__(self, array, axes):
    self.array, self.axes = array, tuple(axes)


jax.tree_util.register_pytree_node(
    _NamedArray, lambda n: ((n.array,), n.axes),
    lambda axes, children: _NamedArray(children[0], axes))


def _named_dot(x, w, out):
  """``hax.dot``-style: contract the axes named in both and not in ``out``."""
  letters = {n: chr(97 + i) for i, n in enumerate(dict.fromkeys(
      x.axes + w.axes))}
  spec = "".join(letters[n] for n in x.axes) + "," + "".join(
      letters[n] for n in w.axes) + "->" + "".join(letters[n] for n in out)
  return _NamedArray(jnp.einsum(spec, x.array, w.array), out)


def test_routing_recipe_haliax():
  eqx = pytest.importorskip("equinox")

  class Model(eqx.Module):
    embed: _NamedArray    # (vocab, embed)
    up: _NamedArray       # (layers, embed, mlp)
    down: _NamedArray     # (layers, mlp, embed)
    norm: _NamedArray     # (layers, embed)
    head: _NamedArray     # (embed, vocab)

    def __call__(self, tokens):
      x = _NamedArray(self.embed.array[tokens], ("pos", "embed"))

      def block(x, layer):
        up, down, norm = (_NamedArray(a, n.axes[1:]) for a, n in zip(
            layer, (self.up, self.down, self.norm)))
        h = _NamedArray(x * norm.array, ("pos", "embed"))
        h = _named_dot(h, up, ("pos", "mlp"))
        h = _named_dot(_NamedArray(jax.nn.gelu(h.array), h.axes), down,
                       ("pos", "embed"))
        return x + h.array, None
      x, _ = jax.lax.scan(block, x.array, (self.up.array, self.down.array,
                                           self.norm.array))
      return _named_dot(_NamedArray(x, ("pos", "embed")), self.head,
                        ("pos", "vocab")).array

  model = Model(_NamedArray(_z(10, D), ("vocab", "embed")),
                _NamedArray(_z(L, D, F), ("layers", "embed", "mlp")),
                _NamedArray(_z(L, F, D), ("layers", "mlp", "embed")),
                _NamedArray(_z(L, D), ("layers", "embed")),
                _NamedArray(_z(D, 10), ("embed", "vocab")))
  _, layout = _run_recipe("haliax", eqx=eqx, model=model,
                          x=jnp.zeros(5, jnp.int32))
  assert _axes(layout, "up/0") == _muon([1], [2], [0])
  assert _axes(layout, "down/0") == _muon([1], [2], [0])
  assert _axes(layout, "norm/0") == ADAMW   # stacked norm: elementwise
  assert _axes(layout, "head/0") == ADAMW and _axes(layout, "embed/0") == ADAMW
