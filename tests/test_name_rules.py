"""The name-based defaults on the layouts of well-known JAX libraries (issue 19).

Each model's leaves get the label and matrix view its own code implies from
the zero-config defaults (``om.muon_labels`` + ``om.matrix_view``), or a
warning names them and following its advice literally gives them. The
expectations are written from the libraries' sources (named per tree), never
from optax_muon: the real params for the zoo's models (tests/_models.py), and
shapes-and-names trees for Gemma, MaxText and Haliax/Levanter, which do not
install in minutes.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from optax_muon import _matrix
from tests import _models


def _views(params, batch_axes=None):
  """``{path: (label, sorted fan-in axes, sorted fan-out axes)}`` from the
  defaults, and the warnings they gave (the aliases' label function)."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    labels = _label_fn(params, batch_axes)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  out = {}
  for (path, leaf), lab in zip(leaves, treedef.flatten_up_to(labels)):
    if lab == "muon":
      v = om.matrix_view(path, leaf, batch_axes)
      out[_matrix.path_str(path)] = (lab, tuple(sorted(v.fan_in_axes)),
                                     tuple(sorted(v.fan_out_axes)))
    else:
      out[_matrix.path_str(path)] = (lab, (), ())
  return out, [str(w.message) for w in caught
               if issubclass(w.category, UserWarning)]


def _label_fn(params, batch_axes):
  # What every alias calls with param_labels=None (warnings included).
  from optax_muon import _labels
  return _labels.resolve_labels(None, batch_axes)(params)


def _want(expected):
  return {k: (e.label, tuple(sorted(e.fan_in)), tuple(sorted(e.fan_out)))
          for k, e in expected.items()}


def _advice(messages):
  """The ``batch_axes=om.stacked(...)`` a stacked-layers warning gives."""
  for m in messages:
    found = re.search(r"batch_axes=(om\.stacked\([^)]*\))", m)
    if found:
      return found.group(1)
  return None


def _check(params, expected, names_default=()):
  """Right by default, or warned about with advice that works."""
  got, messages = _views(params)
  want = _want(expected)
  wrong = {k for k in want if got[k] != want[k]}
  if not wrong:
    return messages
  advice = _advice(messages)
  assert advice is not None, (
      f"silently wrong: {[(k, got[k], want[k]) for k in sorted(wrong)]}")
  followed, _ = _views(params, batch_axes=eval(advice, {"om": om}))
  still = {k for k in want if followed[k] != want[k]}
  unwarned = sorted(k for k in still if k not in names_default)
  assert not unwarned, (
      f"{advice} leaves {[(k, followed[k], want[k]) for k in unwarned]}")
  return messages


# ------------------------------------------------ the zoo's real models ----

@functools.cache
def _case(name):
  return _models.CASES[name]()


@pytest.mark.parametrize("name", sorted(_models.CASES))
def test_zoo_defaults_are_right_or_warned(name):
  case = _case(name)
  _check(case.params, case.expected, case.names_default)


# ---------------------------------------------- the vocabulary collisions --

def test_sharded_train_vocabulary_collision():
  # examples/sharded_train.py at its defaults: byte vocabulary 256, d_model
  # 64, so every blocks/*/mlp/fc/kernel is (64, 256) like the head.
  # Its head is named ``head``, which settles the match: no warning, and
  # describe names the matches.
  case = _case("sharded-train-gpt")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    labels = om.muon_labels(case.params)
  # (flax 0.12.0's State keeps the Variable around a label: unwrap it.)
  label = lambda x: getattr(x, "value", x)
  assert label(labels["blocks"][0]["mlp"]["fc"]["kernel"]) == "muon"
  assert label(labels["blocks"][1]["mlp"]["fc"]["kernel"]) == "muon"
  assert label(labels["head"]["kernel"]) == "adamw"
  text = om.describe(case.params)
  assert "3 matrices have fan-out 256 (blocks/*/mlp/fc/kernel (x2), " \
      "head/kernel); the head among them is named as one" in text
  # Renamed so that no name marks the head, the match is ambiguous: a
  # warning names all three, and none is made a head by its shape.
  renamed = dict(case.params)
  renamed["to_vocab"] = renamed.pop("head")
  with pytest.warns(UserWarning, match=r"blocks/\*/mlp/fc/kernel \(x2\)"):
    ambiguous = om.muon_labels(renamed)
  assert label(ambiguous["to_vocab"]["kernel"]) == "muon"
  assert "ambiguous" in om.describe(renamed)


def test_llama_intermediate_equal_to_vocabulary():
  # gate_proj and up_proj are as wide as the vocabulary; lm_head is named.
  case = _case("hf-llama-vocab-collision")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    labels = om.muon_labels(case.params)
  text = om.describe(case.params)
  note = next(line for line in text.splitlines()
              if line.startswith("vocabulary 32"))
  assert "gate_proj/kernel" in note and "up_proj/kernel" in note
  assert "the head among them is named as one" in note
  layer = labels["model"]["layers"]["0"]["mlp"]
  assert layer["gate_proj"]["kernel"] == layer["up_proj"]["kernel"] == "muon"
  assert labels["lm_head"]["kernel"] == "adamw"


def test_one_match_is_the_head():
  # An untied head under a name no rule knows: the only (·, V) matrix.
  z = lambda *s: np.zeros(s, np.float32)
  params = {"tok_emb": {"embedding": z(40, 16)},
            "hidden": {"kernel": z(16, 64)}, "proj": {"kernel": z(16, 40)}}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    labels = om.muon_labels(params)
  assert labels["proj"]["kernel"] == "adamw"
  assert labels["hidden"]["kernel"] == "muon"
  assert "proj/kernel, the one matrix with fan-out 40" in om.describe(params)


# ----------------------------------- shapes-and-names trees from sources ----

D, N, K, H, F, V, L, E = 16, 4, 2, 8, 48, 40, 3, 5


def _z(*shape):
  return np.zeros(shape, np.float32)


def _gemma(qkv: bool, transposed: bool):
  """gemma 4.1 (gemma/gm/nn/_modules.py, _layers.py, _transformer.py; read at
  7691fd4): Embedder.input_embedding (V, D), tied (Embedder.decode); per
  layer_<i>: Attention's einsums 'BTD,NDH->BTNH' (q_einsum), 'BSD,CKDH->
  CBSKH' (kv_einsum, then split into K and V), 'BTD,SNDH->SBTNH'
  (qkv_einsum), 'BTNH,NHD->BTD' (attn_vec_einsum); FeedForward's
  gating_einsum '...F,NHF->...NH' (2, F, D) when transpose_gating_einsum
  (Gemma 2/3) else '...F,NFH->...NH' (2, D, F), linear '...H,HF->...F';
  RMSNorm scales."""
  params = {"embedder": {"input_embedding": _z(V, D)},
            "final_norm": {"scale": _z(D)}}
  exp = {"embedder/input_embedding": _models.ADAMW,
         "final_norm/scale": _models.ADAMW}
  for i in range(2):
    p = f"layer_{i}"
    attn = {"attn_vec_einsum": {"w": _z(N, H, D)},
            "_query_norm": {"scale": _z(H)}, "_key_norm": {"scale": _z(H)}}
    exp[f"{p}/attn/attn_vec_einsum/w"] = _models.muon((0, 1), 2)
    if qkv:
      attn["qkv_einsum"] = {"w": _z(3, N, D, H)}
      exp[f"{p}/attn/qkv_einsum/w"] = _models.muon(2, (1, 3))  # 0: q, k, v
    else:
      attn["q_einsum"] = {"w": _z(N, D, H)}
      attn["kv_einsum"] = {"w": _z(2, K, D, H)}
      exp[f"{p}/attn/q_einsum/w"] = _models.muon(1, (0, 2))
      exp[f"{p}/attn/kv_einsum/w"] = _models.muon(2, (1, 3))   # 0: k, v
    gating = _z(2, F, D) if transposed else _z(2, D, F)
    params[p] = {"attn": attn,
                 "mlp": {"gating_einsum": gating, "linear": _z(F, D)}}
    exp[f"{p}/mlp/gating_einsum"] = (_models.muon(2, 1) if transposed
                                     else _models.muon(1, 2))  # 0: gate, up
    exp[f"{p}/mlp/linear"] = _models.muon(0, 1)
    for norm in ("pre_attention_norm", "post_attention_norm",
                 "pre_ffw_norm", "post_ffw_norm"):
      params[p][norm] = {"scale": _z(D)}
      exp[f"{p}/{norm}/scale"] = _models.ADAMW
    for norm in ("_query_norm", "_key_norm"):
      exp[f"{p}/attn/{norm}/scale"] = _models.ADAMW
  return params, exp


@pytest.mark.parametrize("qkv, transposed", [(False, True), (True, False)])
def test_gemma_einsums(qkv, transposed):
  params, exp = _gemma(qkv, transposed)
  assert len(exp) == len(jax.tree.leaves(params)) == (22 if qkv else 24)
  got, messages = _views(params)
  assert got == _want(exp) and not messages


def _maxtext(moe: bool):
  """MaxText (src/maxtext at e591f30): models' token_embedder/embedding;
  layers/decoders.py: nn.scan over the layers with variable_axes={"params":
  cfg.param_scan_axis} (configs/base.yml: scan_layers true, param_scan_axis
  1: the layer axis at 1 of every stacked param), decoder_norm,
  logits_dense (D, V); models/llama2.py: pre/post_self_attention_layer_norm
  (RMSNorm scale), self_attention (layers/attentions.py: query/key/value
  DenseGeneral (D, N, H), out (N, H, D)), mlp (layers/linears.py MlpBlock:
  wi_0, wi_1 (D, F), wo (F, D)); models/mixtral.py + layers/moe.py:
  MoeBlock_0 with gate (GateLogit, (D, E)) and wi_0, wi_1 (E, D, F), wo (E,
  F, D) -- one matrix per expert."""
  layers = {
      "pre_self_attention_layer_norm": {"scale": _z(D, L)},
      "post_self_attention_layer_norm": {"scale": _z(D, L)},
      "self_attention": {"query": {"kernel": _z(D, L, N, H)},
                         "key": {"kernel": _z(D, L, N, H)},
                         "value": {"kernel": _z(D, L, N, H)},
                         "out": {"kernel": _z(N, L, H, D)}}}
  exp = {"token_embedder/embedding": _models.ADAMW,
         "decoder/decoder_norm/scale": _models.ADAMW,
         "decoder/logits_dense/kernel": _models.ADAMW}
  pre = "decoder/layers"
  for n in ("pre_self_attention_layer_norm", "post_self_attention_layer_norm"):
    exp[f"{pre}/{n}/scale"] = _models.ADAMW
  for n in ("query", "key", "value"):
    exp[f"{pre}/self_attention/{n}/kernel"] = _models.muon(0, (2, 3))
  exp[f"{pre}/self_attention/out/kernel"] = _models.muon((0, 2), 3)
  if moe:
    layers["MoeBlock_0"] = {"gate": {"kernel": _z(D, L, E)},
                            "wi_0": _z(E, L, D, F), "wi_1": _z(E, L, D, F),
                            "wo": _z(E, L, F, D)}
    exp[f"{pre}/MoeBlock_0/gate/kernel"] = _models.muon(0, 2)
    for n in ("wi_0", "wi_1", "wo"):
      exp[f"{pre}/MoeBlock_0/{n}"] = _models.muon(2, 3)
  else:
    layers["mlp"] = {"wi_0": {"kernel": _z(D, L, F)},
                     "wi_1": {"kernel": _z(D, L, F)},
                     "wo": {"kernel": _z(F, L, D)}}
    for n in ("wi_0", "wi_1", "wo"):
      exp[f"{pre}/mlp/{n}/kernel"] = _models.muon(0, 2)
  params = {"token_embedder": {"embedding": _z(V, D)},
            "decoder": {"decoder_norm": {"scale": _z(D)},
                        "logits_dense": {"kernel": _z(D, V)},
                        "layers": layers}}
  return params, exp


@pytest.mark.parametrize("moe", [False, True])
def test_maxtext_layer_axis_1_and_experts(moe):
  params, exp = _maxtext(moe)
  messages = _check(params, exp)
  # The advice names the layer axis MaxText scans at; followed literally it
  # gives every leaf its view (checked by _check).
  assert _advice(messages) == "om.stacked('layers', axis=1)"
  if moe:  # the experts are batch axes even without the advice
    got, _ = _views(params)
    want = _want(exp)
    for n in ("wi_0", "wi_1", "wo"):
      key = f"decoder/layers/MoeBlock_0/{n}"
      assert got[key] == want[key]


@jax.tree_util.register_pytree_node_class
class NamedArray:
  """Flattens as haliax.core.NamedArray does (haliax src/haliax/core.py at
  f41e7d4: ``tree_flatten`` returns ``((self.array,), self.axes)``), so a
  leaf's path ends with the index ``0``."""

  def __init__(self, array, axes):
    self.array, self.axes = array, axes

  def tree_flatten(self):
    return (self.array,), self.axes

  @classmethod
  def tree_unflatten(cls, axes, children):
    return cls(children[0], axes)


def _na(*sizes_and_names):
  names = tuple(n for n, _ in sizes_and_names)
  return NamedArray(_z(*(s for _, s in sizes_and_names)), names)


def _levanter_llama():
  """Levanter's Llama on Haliax (haliax src/haliax/nn/linear.py at f41e7d4:
  Linear.init(In, Out, out_first=True) makes ``weight`` with the Out axes,
  then In; nn/scan.py Stacked puts the layers first under ``stacked``;
  nn/normalization.py LayerNorm weight, bias (axis,)). Attention as in
  levanter's LlamaAttention: q_proj In=Embed, Out=(KVHeads, QHeadsPerGroup,
  HeadSize); k_proj/v_proj Out=(KVHeads, HeadSize); o_proj In=(Heads,
  HeadSize), Out=Embed; MLP gate/up (Mlp, Embed), down (Embed, Mlp)."""
  lay, kvh, g = ("layers", L), ("kv_heads", K), ("q_per_group", 2)
  hd, emb, mlp = ("head_size", H), ("embed", D), ("mlp", F)
  stacked = {
      "self_attn": {"q_proj": {"weight": _na(lay, kvh, g, hd, emb)},
                    "k_proj": {"weight": _na(lay, kvh, hd, emb)},
                    "v_proj": {"weight": _na(lay, kvh, hd, emb)},
                    "o_proj": {"weight": _na(lay, emb, ("heads", N), hd)}},
      "mlp": {"gate_proj": {"weight": _na(lay, mlp, emb)},
              "up_proj": {"weight": _na(lay, mlp, emb)},
              "down_proj": {"weight": _na(lay, emb, mlp)}},
      "input_layernorm": {"weight": _na(lay, emb), "bias": _na(lay, emb)},
      "post_attention_layernorm": {"weight": _na(lay, emb),
                                   "bias": _na(lay, emb)}}
  params = {"embeddings": {"token_embeddings": {"weight": _na(("vocab", V),
                                                              emb)}},
            "transformer": {"layers": {"stacked": stacked},
                            "norm": {"weight": _na(emb)}},
            "lm_head": {"weight": _na(("vocab", V), emb)}}
  s = "transformer/layers/stacked"
  exp = {"embeddings/token_embeddings/weight/0": _models.ADAMW,
         "transformer/norm/weight/0": _models.ADAMW,
         "lm_head/weight/0": _models.ADAMW,
         f"{s}/self_attn/q_proj/weight/0": _models.muon(4, (1, 2, 3)),
         f"{s}/self_attn/k_proj/weight/0": _models.muon(3, (1, 2)),
         f"{s}/self_attn/v_proj/weight/0": _models.muon(3, (1, 2)),
         f"{s}/self_attn/o_proj/weight/0": _models.muon((2, 3), 1),
         f"{s}/mlp/gate_proj/weight/0": _models.muon(2, 1),
         f"{s}/mlp/up_proj/weight/0": _models.muon(2, 1),
         f"{s}/mlp/down_proj/weight/0": _models.muon(2, 1)}
  for n in ("input_layernorm", "post_attention_layernorm"):
    exp[f"{s}/{n}/weight/0"] = exp[f"{s}/{n}/bias/0"] = _models.ADAMW
  return params, exp


def test_haliax_trailing_index_and_stacked_norms():
  params, exp = _levanter_llama()
  got, messages = _views(params)
  # The norms' weight/0 and bias/0 go to AdamW without any advice.
  for k in exp:
    if "layernorm" in k:
      assert got[k] == ("adamw", (), ())
  messages = _check(params, exp)
  assert _advice(messages) == "om.stacked('stacked', axis=0)"


# ------------------------------------- trees as JAX libraries hand them ----

def _train(tx, case, steps=6):
  params = case.params
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(case.loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return losses


def test_equinox_none_leaves_and_module_trees_through_a_jitted_step():
  eqx = pytest.importorskip("equinox")
  case = _case("equinox-mlp")
  assert isinstance(case.params, eqx.Module) and callable(case.params)
  assert None in jax.tree.leaves(case.params, is_leaf=lambda x: x is None)
  # Label and axes trees as the same module type as the params.
  labels = om.muon_labels(case.params)
  assert type(labels) is type(case.params)
  assert labels.layers[-1].weight == "adamw"   # the MLP's output layer
  assert labels.layers[1].weight == "muon"
  axes = jax.tree_util.tree_map_with_path(
      lambda p, x: om.MatrixAxes(1, 0) if x.ndim == 2 else None, case.params)
  batch = jax.tree.map(lambda x: None, case.params)
  assert "muon" in om.describe(case.params, param_labels=labels,
                               matrix_axes=axes, batch_axes=batch)
  tx = om.muon(0.02, adamw_learning_rate=1e-2, param_labels=labels,
               matrix_axes=axes, batch_axes=batch)
  losses = _train(tx, case)
  assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses


def test_custom_pytree_nodes_as_params_labels_and_axes():
  @jax.tree_util.register_dataclass
  @dataclasses.dataclass
  class Layer:
    kernel: jax.Array
    bias: jax.Array

    def __call__(self, x):  # callable, like an eqx.Module
      return x @ self.kernel + self.bias

  params = Layer(jnp.zeros((4, 6)), jnp.zeros((6,)))
  labels = om.muon_labels(params)
  assert labels == Layer("muon", "adamw")
  spec = Layer(om.MatrixAxes(1, 0), None)
  batch = Layer(None, None)
  # The spec (fan-in axis 1, fan-out axis 0) reaches the view: 6 x 4, shape
  # scale sqrt(max(1, 4/6)) = 1; the default view is 4 x 6, sqrt(6/4).
  rows = om.describe(params, param_labels=labels, matrix_axes=spec,
                     batch_axes=batch).splitlines()
  assert rows[2].split()[4:7] == ["6", "x", "4"] and rows[2].endswith("1.000")
  assert om.describe(params).splitlines()[2].endswith(f"{np.sqrt(1.5):.3f}")
  tx = om.muon(0.02, param_labels=labels, matrix_axes=spec, batch_axes=batch)
  grads = Layer(jnp.ones((4, 6)), jnp.ones((6,)))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert type(updates) is Layer and updates.kernel.shape == (4, 6)


def test_ambiguous_vocabulary_advice_names_the_head():
  # An unnamed head among hidden layers as wide as the vocabulary: the
  # warning names all three; its advice, followed, routes the head alone.
  z = lambda *s: np.zeros(s, np.float32)
  params = {"tok_emb": {"embedding": z(40, 16)},
            "blocks": [{"up": {"kernel": z(16, 40)}} for _ in range(2)],
            "to_vocab": {"kernel": z(16, 40)}}
  with pytest.warns(UserWarning, match=r"to_vocab/kernel") as record:
    labels = om.muon_labels(params)
  assert "blocks/*/up/kernel (x2)" in str(record[0].message)
  assert jax.tree.leaves(labels) == ["muon"] * 3 + ["adamw"]
  advice = re.search(r"param_labels=(lambda p: om\.muon_labels\(.*?"
                     r"vocab_size=None\))", str(record[0].message)).group(1)
  fixed = eval(advice.replace("<its name>", "to_vocab"), {"om": om})
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    labels = fixed(params)
  assert labels["to_vocab"]["kernel"] == "adamw"
  assert labels["blocks"][1]["up"]["kernel"] == "muon"


def test_only_an_mlp_s_last_layer_is_its_head():
  eqx = pytest.importorskip("equinox")
  key = jax.random.key(0)

  class Net(eqx.Module):  # its own list of layers, then a separate output
    layers: list
    out: eqx.nn.Linear

  net = Net([eqx.nn.Linear(3, 8, key=key), eqx.nn.Linear(8, 8, key=key)],
            eqx.nn.Linear(8, 2, key=key))
  labels = om.muon_labels(eqx.filter(net, eqx.is_array))
  assert [layer.weight for layer in labels.layers] == ["muon", "muon"]
  mlp = eqx.nn.MLP(3, 2, 8, 2, key=key)
  labels = om.muon_labels({"mlp": eqx.filter(mlp, eqx.is_array)})
  assert [layer.weight for layer in labels["mlp"].layers] == [
      "muon", "muon", "adamw"]
  # In a block the MLP is a feed-forward, its last layer hidden.
  labels = om.muon_labels({"blocks": [{"ffn": eqx.filter(mlp, eqx.is_array)}]})
  assert labels["blocks"][0]["ffn"].layers[-1].weight == "muon"
