"""Routing and matrix views on real Flax models: NNX and Linen transformers
scanned over layers, and a CNN with BatchNorm. Every leaf's label and view
is checked, an attention kernel's update against tests/reference.py, and
a short run's loss falls."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_muon as om
from optax_muon import _matrix
from tests import _flax_compat, reference

VOCAB, D, HEADS, LAYERS, SEQ = 50, 16, 2, 2, 8
HD = D // HEADS


# --- models ----------------------------------------------------------------


class Block(nnx.Module):
  def __init__(self, rngs):
    self.ln1 = nnx.LayerNorm(D, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
        num_heads=HEADS, in_features=D, decode=False, rngs=rngs)
    self.ln2 = nnx.RMSNorm(D, rngs=rngs)
    self.up = nnx.Linear(D, 4 * D, rngs=rngs)
    self.down = nnx.Linear(4 * D, D, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class NnxLM(nnx.Module):
  """Blocks built with nnx.vmap, applied with nnx.scan; an untied head with
  a name no rule knows (found by its fan-out = vocabulary)."""

  def __init__(self, rngs):
    self.tok_emb = nnx.Embed(VOCAB, D, rngs=rngs)
    self.pos_emb = nnx.Embed(SEQ, D, rngs=rngs)

    @nnx.split_rngs(splits=LAYERS)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return Block(rngs)

    self.layers = make(rngs)
    self.ln_f = nnx.LayerNorm(D, rngs=rngs)
    self.unembed = nnx.Linear(D, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    x = self.tok_emb(tokens) + self.pos_emb(jnp.arange(tokens.shape[-1]))

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x, block):
      return block(x)

    return self.unembed(self.ln_f(body(x, self.layers)))


class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(nn.LayerNorm()(x))
    h = nn.Dense(D)(jax.nn.gelu(nn.Dense(4 * D)(nn.RMSNorm()(x))))
    return x + h, None


class LinenLM(nn.Module):
  """linen.scan over the blocks; the head is Linen's auto-named Dense_0."""

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB, D, name="tok_emb")(tokens)
    x = x + nn.Embed(SEQ, D, name="pos_emb")(jnp.arange(tokens.shape[-1]))
    stack = nn.scan(LinenBlock, variable_axes={"params": 0},
                    split_rngs={"params": True}, length=LAYERS)
    x, _ = stack(name="layers")(x, None)
    return nn.Dense(VOCAB)(nn.LayerNorm()(x))


class ConvNet(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(8, rngs=rngs)
    self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)
    self.bn2 = nnx.BatchNorm(16, rngs=rngs)
    self.classifier = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    return self.classifier(x.mean(axis=(1, 2)))


def _views(params, **kw):
  """{path: (label, fan_in, fan_out, batch_axes)} as the optimizer sees it."""
  batch_axes, matrix_axes = kw.get("batch_axes"), kw.get("matrix_axes")
  labels = om.muon_labels(params, batch_axes=batch_axes,
                          matrix_axes=matrix_axes)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  out = {}
  for (path, leaf), lab in zip(leaves, treedef.flatten_up_to(labels)):
    if lab == "muon":
      v = om.matrix_view(path, leaf, batch_axes, matrix_axes=matrix_axes)
      out[_matrix.path_str(path)] = (lab, v.fan_in, v.fan_out, v.batch_axes)
    else:
      out[_matrix.path_str(path)] = (lab,)
  return out


def _tokens(seed=0):
  # NumPy draws: eager jax.random compiles a program per shape (seconds).
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (4, SEQ)),
                     jnp.int32)


# Every leaf of both transformers: with batch_axes=om.stacked("layers") each
# layer's matrices are separate; q/k/v kernels (L, in, heads, head_dim) are
# (in, heads*head_dim) and the out kernel (L, heads, head_dim, out) is
# (heads*head_dim, out); biases (heads, head_dim) / (L, d) and norm scales
# go to AdamW; embeddings and the vocabulary-sized head too.
NNX_EXPECTED = {
    "tok_emb/embedding": ("adamw",),
    "pos_emb/embedding": ("adamw",),
    "layers/ln1/scale": ("adamw",),
    "layers/ln1/bias": ("adamw",),
    "layers/attn/query/kernel": ("muon", D, D, (0,)),
    "layers/attn/key/kernel": ("muon", D, D, (0,)),
    "layers/attn/value/kernel": ("muon", D, D, (0,)),
    "layers/attn/query/bias": ("adamw",),
    "layers/attn/key/bias": ("adamw",),
    "layers/attn/value/bias": ("adamw",),
    "layers/attn/out/kernel": ("muon", D, D, (0,)),
    "layers/attn/out/bias": ("adamw",),
    "layers/ln2/scale": ("adamw",),
    "layers/up/kernel": ("muon", D, 4 * D, (0,)),
    "layers/up/bias": ("adamw",),
    "layers/down/kernel": ("muon", 4 * D, D, (0,)),
    "layers/down/bias": ("adamw",),
    "ln_f/scale": ("adamw",),
    "ln_f/bias": ("adamw",),
    "unembed/kernel": ("adamw",),
    "unembed/bias": ("adamw",),
}


def _linen_expected():
  attn = "layers/MultiHeadDotProductAttention_0"
  out = {
      "tok_emb/embedding": ("adamw",),
      "pos_emb/embedding": ("adamw",),
      "layers/LayerNorm_0/scale": ("adamw",),
      "layers/LayerNorm_0/bias": ("adamw",),
      "layers/RMSNorm_0/scale": ("adamw",),
      # Linen names the outer Dense(D) first: it is built before its input.
      "layers/Dense_0/kernel": ("muon", 4 * D, D, (0,)),
      "layers/Dense_0/bias": ("adamw",),
      "layers/Dense_1/kernel": ("muon", D, 4 * D, (0,)),
      "layers/Dense_1/bias": ("adamw",),
      f"{attn}/out/kernel": ("muon", D, D, (0,)),
      f"{attn}/out/bias": ("adamw",),
      "LayerNorm_0/scale": ("adamw",),
      "LayerNorm_0/bias": ("adamw",),
      "Dense_0/kernel": ("adamw",),
      "Dense_0/bias": ("adamw",),
  }
  for name in ("query", "key", "value"):
    out[f"{attn}/{name}/kernel"] = ("muon", D, D, (0,))
    out[f"{attn}/{name}/bias"] = ("adamw",)
  return out


def _zeros(shapes):
  # Shapes suffice for routing and for Muon's update (no weight decay);
  # building the models eagerly would cost many small compilations.
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@pytest.fixture(scope="module")
def nnx_params():
  model = nnx.eval_shape(lambda: NnxLM(nnx.Rngs(0)))
  return _zeros(_flax_compat.pure(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module")
def linen_params():
  return _zeros(jax.eval_shape(LinenLM().init, jax.random.key(0),
                               _tokens())["params"])


def test_nnx_transformer_every_leaf(nnx_params):
  assert _views(nnx_params, batch_axes=om.stacked("layers")) == NNX_EXPECTED


def test_linen_transformer_every_leaf(linen_params):
  assert _views(linen_params, batch_axes=om.stacked("layers")) == (
      _linen_expected())


def test_qkv_kernels_right_without_batch_axes(nnx_params):
  """Attention's q/k/v views need no batch_axes; stacked norms warn."""
  views = _views(nnx_params)
  assert views["layers/attn/query/kernel"] == ("muon", D, D, (0,))
  assert views["layers/attn/query/bias"] == ("adamw",)
  with pytest.warns(UserWarning, match=r"layers/ln1/scale.*om.stacked"):
    om.muon().init(nnx_params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    om.muon(batch_axes=om.stacked("layers")).init(nnx_params)


def test_per_head_views(nnx_params):
  views = _views(nnx_params, batch_axes=om.stacked("layers"),
                 matrix_axes=om.per_head)
  assert views["layers/attn/query/kernel"] == ("muon", D, HD, (0, 2))
  assert views["layers/attn/out/kernel"] == ("muon", HD, D, (0, 1))
  assert views["layers/up/kernel"] == ("muon", D, 4 * D, (0,))


def test_optax_dimension_numbers_tree(nnx_params):
  """optax.contrib.muon users keep their dimension numbers."""
  if not hasattr(optax.contrib, "MuonDimensionNumbers"):
    pytest.skip("this optax (the floor, 0.2.5) has no MuonDimensionNumbers")
  dn = optax.contrib.MuonDimensionNumbers
  path = "layers/attn/query/kernel"

  def spec(p, x):
    if _matrix.path_str(p) == path:
      return dn(reduction_axis=1, output_axis=3)
    return None

  tree = jax.tree_util.tree_map_with_path(spec, nnx_params)
  for axes in (tree, spec):
    views = _views(nnx_params, batch_axes=om.stacked("layers"),
                   matrix_axes=axes)
    assert views[path] == ("muon", D, HD, (0, 2))
    assert views["layers/attn/key/kernel"] == ("muon", D, D, (0,))


def _updates(params, **kw):
  """{path: (update, gradient)} of one Muon step with plain momentum."""
  tx = om.muon(1.0, momentum=0.0, nesterov=False, ns_dtype=jnp.float32,
               batch_axes=om.stacked("layers"), **kw)
  rng = np.random.default_rng(0)
  grads = jax.tree.map(
      lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  flat = jax.tree_util.tree_flatten_with_path
  return {_matrix.path_str(p): (np.asarray(u), g) for (p, u), g in
          zip(flat(updates)[0], jax.tree.leaves(grads))}


@pytest.fixture(scope="module")
def default_updates(nnx_params):
  return _updates(nnx_params)


@pytest.mark.parametrize("name", ["query", "out"])
def test_attention_update_is_newton_schulz_of_the_view(default_updates, name):
  u, g = default_updates[f"layers/attn/{name}/kernel"]
  for layer in range(LAYERS):
    gm = g[layer].reshape(D, D)  # (in, H*hd) or (H*hd, out)
    want = -reference.newton_schulz(gm) * reference.spectral_scale(D, D)
    np.testing.assert_allclose(u[layer].reshape(D, D), want, atol=2e-4)


def test_per_head_update_is_newton_schulz_per_head(nnx_params):
  u, g = _updates(nnx_params, matrix_axes=om.per_head)[
      "layers/attn/query/kernel"]
  for layer in range(LAYERS):
    for h in range(HEADS):
      want = (-reference.newton_schulz(g[layer, :, h])
              * reference.spectral_scale(D, HD))
      np.testing.assert_allclose(u[layer, :, h], want, atol=2e-4)


@pytest.mark.slow
@pytest.mark.integration
def test_nnx_transformer_trains():
  model = nnx.jit(lambda: NnxLM(nnx.Rngs(1)))()
  opt = nnx.Optimizer(
      model, om.muon(0.02, adamw_learning_rate=3e-3,
                     batch_axes=om.stacked("layers")), wrt=nnx.Param)
  tokens = _tokens(1)

  def loss_fn(m):
    logits = m(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, tokens[:, 1:]).mean()

  @nnx.jit
  def step(m, o):
    loss, grads = nnx.value_and_grad(loss_fn)(m)
    o.update(m, grads)
    return loss

  losses = [float(step(model, opt)) for _ in range(15)]
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
@pytest.mark.integration
def test_linen_transformer_trains():
  model, tokens = LinenLM(), _tokens(2)
  linen_params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
  tx = om.muon(0.02, adamw_learning_rate=3e-3, batch_axes=om.stacked("layers"))

  def loss_fn(p):
    logits = model.apply({"params": p}, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, tokens[:, 1:]).mean()

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(grads, s, p)
    return optax.apply_updates(p, u), s, loss

  params, state, losses = linen_params, tx.init(linen_params), []
  for _ in range(15):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


def test_cnn_with_batchnorm_every_leaf():
  model = nnx.eval_shape(lambda: ConvNet(nnx.Rngs(0)))
  assert _views(_flax_compat.pure(nnx.state(model, nnx.Param))) == {
      "conv1/kernel": ("muon", 9, 8, ()),
      "conv1/bias": ("adamw",),
      "bn1/scale": ("adamw",),
      "bn1/bias": ("adamw",),
      "conv2/kernel": ("muon", 72, 16, ()),
      "conv2/bias": ("adamw",),
      "bn2/scale": ("adamw",),
      "bn2/bias": ("adamw",),
      "classifier/kernel": ("adamw",),
      "classifier/bias": ("adamw",),
  }


@pytest.mark.slow
@pytest.mark.integration
def test_cnn_with_batchnorm_trains():
  model = nnx.jit(lambda: ConvNet(nnx.Rngs(0)))()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((16, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 16), jnp.int32)
  opt = nnx.Optimizer(model, om.muon(0.02, adamw_learning_rate=1e-2),
                      wrt=nnx.Param)

  @nnx.jit
  def step(m, o):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(m)
    o.update(m, grads)
    return loss

  losses = [float(step(model, opt)) for _ in range(15)]
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]


# --- naming conventions of other code bases ----------------------------------


def _z(*shape):
  return np.zeros(shape, np.float32)


def test_gpt2_medium_positional_table_is_not_the_vocabulary():
  # GPT-2-medium: wpe is (1024, 1024), as wide as the model; hidden (·, 1024)
  # matrices must stay in Muon. Scaled down: wpe (32, 32), d = 32.
  params = {"wte": {"embedding": _z(500, 32)}, "wpe": {"embedding": _z(32, 32)},
            "h": {"0": {"mlp": {"c_fc": {"kernel": _z(32, 128)},
                                "c_proj": {"kernel": _z(128, 32)}}}},
            "lm_head": {"kernel": _z(32, 500)}}
  labels = om.muon_labels(params)
  assert om.token_vocab_size(params) == 500
  assert labels["h"]["0"]["mlp"]["c_proj"]["kernel"] == "muon"
  assert labels["h"]["0"]["mlp"]["c_fc"]["kernel"] == "muon"
  assert labels["lm_head"]["kernel"] == "adamw"
  assert labels["wpe"]["embedding"] == "adamw"


def test_llama_and_bert_output_names():
  llama = {"tok_embeddings": {"embedding": _z(500, 32)},
           "layers": {"0": {"attention": {"wq": {"kernel": _z(32, 32)}}}},
           "output": {"kernel": _z(32, 500)}}
  labels = om.muon_labels(llama, vocab_size=None)  # the name alone
  assert labels["output"]["kernel"] == "adamw"
  assert labels["layers"]["0"]["attention"]["wq"]["kernel"] == "muon"
  # BERT's output sub-trees hold hidden matrices.
  bert = {"layer": {"0": {"attention": {"output": {"dense": {
      "kernel": _z(32, 32)}}}, "output": {"dense": {"kernel": _z(128, 32)}}}}}
  labels = om.muon_labels(bert)
  assert labels["layer"]["0"]["attention"]["output"]["dense"]["kernel"] == "muon"
  assert labels["layer"]["0"]["output"]["dense"]["kernel"] == "muon"


def test_vocabulary_equal_to_width_is_not_used():
  params = {"tok_emb": {"embedding": _z(32, 32)},
            "hidden": {"kernel": _z(64, 32)}}
  assert om.token_vocab_size(params) is None
  assert om.muon_labels(params)["hidden"]["kernel"] == "muon"


def test_describe_lists_every_leaf(nnx_params):
  text = om.describe(nnx_params, learning_rate=0.02,
                     batch_axes=om.stacked("layers"))
  lines = text.splitlines()
  assert len(lines) == 1 + len(NNX_EXPECTED) + 2
  row = next(r for r in lines if r.startswith("layers/attn/query/kernel "))
  assert row.split()[1:] == ["(2,", "16,", "2,", "8)", "muon", "16", "x", "16",
                             "1", "|", "2,3", "0:2", "1.000"]
  assert "vocabulary 50" in text
  assert "note:" in om.describe(nnx_params)  # stacked, no batch_axes
  layered = {"blocks": [{"w": _z(4, 4), "b": _z(4)} for _ in range(3)]}
  grouped = om.describe(layered, group_layers=True).splitlines()
  assert grouped[1].split()[:3] == ["blocks/*/b", "(x3)", "(4,)"]
  assert grouped[2].split()[:3] == ["blocks/*/w", "(x3)", "(4,"]
  with pytest.raises(ValueError, match="learnin_rate"):
    om.describe(nnx_params, learnin_rate=0.02)


def test_bad_matrix_axes_name_the_leaf():
  params = {"w": _z(4, 3, 2)}
  with pytest.raises(ValueError, match=r"fan_in=5.*'w'"):
    om.scale_by_muon(matrix_axes=om.MatrixAxes(5, 1)).init(params)
  with pytest.raises(ValueError, match=r"twice.*'w'"):
    om.scale_by_muon(matrix_axes=om.MatrixAxes(0, (0, 1))).init(params)
  with pytest.raises(ValueError, match=r"share an axis.*'w'"):
    om.scale_by_muon(batch_axes=0,
                     matrix_axes=om.MatrixAxes(0, 1)).init(params)
  with pytest.raises(ValueError, match=r"'w'.*om.MatrixAxes"):
    om.scale_by_muon(matrix_axes=lambda p, x: (0, 1)).init(params)


def test_inject_hyperparams_with_matrix_axes(nnx_params):
  assert "matrix_axes" in om.static_args(om.muon)
  tx = optax.inject_hyperparams(om.muon, static_args=om.static_args(om.muon))(
      learning_rate=0.02, matrix_axes=om.per_head,
      batch_axes=om.stacked("layers"))
  tx.init(nnx_params)


@pytest.mark.parametrize("alias", [om.normuon, om.mommuon])
def test_per_head_state_follows_the_view(nnx_params, alias):
  """Per-matrix state has the view's batch shape: (layers, heads, ...)."""
  tx = alias(batch_axes=om.stacked("layers"), matrix_axes=om.per_head)
  state = jax.eval_shape(tx.init, nnx_params)
  extra = state.inner_states["muon"].inner_state[0][2]
  shape = extra["layers"]["attn"]["query"]["kernel"].shape
  if alias is om.normuon:  # (layers, heads, fan_out)
    assert shape == (LAYERS, HEADS, HD)
  else:  # (layers, heads, k, k) with k = min(fan_in, fan_out)
    assert shape == (LAYERS, HEADS, HD, HD)
