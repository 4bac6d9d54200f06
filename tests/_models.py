"""A zoo of tiny models from the JAX libraries people train, with the
hand-derived routing of every leaf (issue 19).

Each :class:`ModelCase` holds a model's trainable params exactly as users hand
them to optax, a pure ``forward(params, *args)``, a ``loss(params)`` on a
fixed small batch, and :class:`Expected` -- the label and matrix axes of every
array leaf, written by reading what the model's own code does with it:

- multiplied with activations (``dot_general``, ``einsum``, a convolution):
  ``"muon"``; the contracted axes (for a convolution: input channels and the
  kernel's spatial axes) are the fan-in, the free axes the fan-out, and every
  other axis (stacked layers of a ``vmap``/``scan``, experts) a batch axis;
  a free axis of its own that the code takes apart right after the product
  (Gemma's ``kv_einsum`` ``C`` and ``gating_einsum`` ``N``, Levanter's
  ``qkv``: k and v, gate and up are separate matrices) is a batch axis too,
  while q/k/v fused into one axis (GPT-2's ``c_attn (3d, d)``) stay one
  fan-out, as no axis separates them; attention heads that are free axes
  of one product (Flax's ``(in, heads, head_dim)``, Gemma's ``q_einsum``)
  are fan-out, not batch;
- the matrix whose product is the model's output (the head), and a table
  that is also the head (a tied embedding): ``"adamw"``;
- only looked up (embeddings), only elementwise (norm scales, biases),
  scalars: ``"adamw"``.

The expectations come from the libraries' source, never from optax_muon.
``CASES`` maps each case's name to a cheap builder. A builder whose library
is missing calls ``pytest.importorskip`` (so a test that builds it is skipped,
e.g. in the jax-0.7.1 floor venv); ``REQUIRES`` names each case's library.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# ------------------------------------------------------------ interface ----


@dataclasses.dataclass(frozen=True)
class Expected:
  """What one leaf should get.

  Attributes:
    label: ``"muon"`` or ``"adamw"``.
    fan_in: the leaf's contracted (input) axes, non-negative; ``()`` for an
      AdamW leaf.
    fan_out: the leaf's free (output) axes, non-negative; ``()`` for an
      AdamW leaf. For a Muon leaf every axis in neither is a batch axis.
      Compare both as sorted tuples.
  """

  label: str
  fan_in: tuple[int, ...] = ()
  fan_out: tuple[int, ...] = ()

  def batch_axes(self, ndim: int) -> tuple[int, ...]:
    """The axes in neither ``fan_in`` nor ``fan_out`` of a rank-``ndim``
    Muon leaf."""
    used = set(self.fan_in) | set(self.fan_out)
    return tuple(a for a in range(ndim) if a not in used)


ADAMW = Expected("adamw")


def muon(fan_in, fan_out) -> Expected:
  """A Muon leaf; an int axis or a tuple of axes each."""
  as_tuple = lambda a: (a,) if isinstance(a, int) else tuple(a)
  return Expected("muon", as_tuple(fan_in), as_tuple(fan_out))


@dataclasses.dataclass
class ModelCase:
  """One model of the zoo.

  Attributes:
    name: e.g. ``"equinox-mlp"``, ``"hf-gpt2"``.
    source: the library, its version and the source files read.
    params: the trainable params as users hand them to optax.
    forward: ``forward(params, *args)`` -> the model's output; pure.
    args: small example inputs for ``forward``.
    loss: ``loss(params)`` -> a scalar on a fixed small batch.
    expected: ``om._matrix.path_str(path)`` -> :class:`Expected` for every
      array leaf of ``params``.
    names_default: leaves whose name-based default cannot be right -> why.
  """

  name: str
  source: str
  params: Any
  forward: Callable
  args: tuple
  loss: Callable
  expected: dict[str, Expected]
  names_default: dict[str, str] = dataclasses.field(default_factory=dict)


# -------------------------------------------------------------- helpers ----

BATCH, SEQ, VOCAB = 2, 8, 64


def _ints(high, shape, seed=0):
  # NumPy draws: eager jax.random compiles a program per shape.
  return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape),
                     jnp.int32)


def _floats(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def _lm_loss(forward, tokens):
  """Next-token cross-entropy of ``forward(p, tokens[:, :-1])``."""
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  return lambda p: _xent(forward(p, inputs), targets)


def _is_abstract(x) -> bool:
  return isinstance(x, jax.ShapeDtypeStruct)


def _fill(abstract, expected, ones=(), seed=0):
  """Concrete values for a tree of ``jax.ShapeDtypeStruct`` leaves.

  The libraries' own initialisers run eagerly, one small compiled program
  per parameter (seconds a model on a 2-core CPU), so the models are built
  with ``jax.eval_shape`` and filled here from NumPy: the tree, shapes and
  dtypes are the library's, the values a standard initialisation. Muon leaves are
  ``N(0, 1/fan_in)``; leaves whose path ends with one of ``ones`` (norm
  scales) are ones; other AdamW leaves of rank 1 are zeros (biases), of
  higher rank (tables, heads, stacked biases) ``N(0, 0.02^2)``.
  """
  from optax_muon import _matrix

  rng = np.random.default_rng(seed)

  def init(path, x):
    key = _matrix.path_str(path)
    exp = expected.get(key, ADAMW)
    if key.endswith(tuple(ones)):
      value = np.ones(x.shape)
    elif exp.label == "muon":
      fan_in = int(np.prod([x.shape[a] for a in exp.fan_in]))
      value = rng.normal(size=x.shape) / np.sqrt(fan_in)
    elif len(x.shape) <= 1:
      value = np.zeros(x.shape)
    else:
      value = 0.02 * rng.normal(size=x.shape)
    return jnp.asarray(value, x.dtype)

  return jax.tree_util.tree_map_with_path(init, abstract,
                                          is_leaf=_is_abstract)


# ------------------------------------------------------------- Equinox ----

EQX_SOURCE = ("equinox 0.13.8: equinox/nn/_linear.py (Linear: weight "
              "(out, in), `self.weight @ x`), _conv.py (Conv: weight (out, "
              "in, *kernel), lax.conv_general_dilated; bias (out, 1, ...)), "
              "_embedding.py (Embedding: `self.weight[x]`), _attention.py "
              "(MultiheadAttention: vmap of the q/k/v/output Linears, "
              "reshaped into heads after the product), _normalisation.py "
              "(LayerNorm: weight, bias elementwise), _mlp.py (MLP: tuple "
              "`layers` of Linears, the last is the output)")


def _eqx_case(name, make, forward_model, args, loss, expected, ones,
              source=""):
  """``params`` is ``eqx.filter(make(), eqx.is_array)`` (its ``None``
  leaves kept), built abstractly and filled by :func:`_fill`; ``forward``
  combines them with the static rest and calls ``forward_model(model,
  *args)``."""
  eqx = pytest.importorskip("equinox")

  abstract, static = eqx.partition(eqx.filter_eval_shape(make), _is_abstract)
  params = _fill(abstract, expected, ones)

  def forward(p, *a):
    return forward_model(eqx.combine(p, static), *a)

  return ModelCase(name, EQX_SOURCE + source, params, forward, args,
                   loss(forward), expected)


def equinox_mlp() -> ModelCase:
  """``eqx.nn.MLP(4 -> 32 -> 32 -> 1)``, regression on a fixed batch."""
  eqx = pytest.importorskip("equinox")

  make = lambda: eqx.nn.MLP(4, 1, width_size=32, depth=2,
                            key=jax.random.key(0))
  x, y = _floats((BATCH * 4, 4)), _floats((BATCH * 4, 1), seed=1)
  fwd = lambda m, x: jax.vmap(m)(x)
  expected = {
      # Linear.__call__: `self.weight @ x`, weight (out, in).
      "layers/0/weight": muon(1, 0),
      "layers/0/bias": ADAMW,
      "layers/1/weight": muon(1, 0),
      "layers/1/bias": ADAMW,
      # The output layer (1, 32): its product is the prediction.
      "layers/2/weight": ADAMW,
      "layers/2/bias": ADAMW,
  }
  case = _eqx_case("equinox-mlp", make, fwd, (x,),
                   lambda f: lambda p: jnp.mean((f(p, x) - y) ** 2), expected,
                   ones=())
  case.names_default["layers/2/weight"] = (
      "the output layer of eqx.nn.MLP is `layers/<depth>/weight`: no name "
      "marks it, and its fan-out (1) is no vocabulary")
  return case


@functools.cache
def _eqx_modules():
  """Equinox transformer modules (defined lazily: equinox may be absent)."""
  eqx = pytest.importorskip("equinox")

  class Block(eqx.Module):
    """Pre-LayerNorm block on one sequence ``(seq, d)``."""
    ln1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp_up: eqx.nn.Linear
    mlp_down: eqx.nn.Linear

    def __init__(self, d, heads, key):
      k1, k2, k3 = jax.random.split(key, 3)
      self.ln1 = eqx.nn.LayerNorm(d)
      self.attention = eqx.nn.MultiheadAttention(heads, d, key=k1)
      self.ln2 = eqx.nn.LayerNorm(d)
      self.mlp_up = eqx.nn.Linear(d, 2 * d, key=k2)
      self.mlp_down = eqx.nn.Linear(2 * d, d, key=k3)

    def __call__(self, x):
      h = jax.vmap(self.ln1)(x)
      x = x + self.attention(h, h, h)
      h = jax.vmap(self.mlp_up)(jax.vmap(self.ln2)(x))
      return x + jax.vmap(self.mlp_down)(jax.nn.gelu(h))

  class Transformer(eqx.Module):
    """Token + position embeddings, blocks, final norm, untied unembedding
    (the names of Equinox's own examples). ``scan=True``: the blocks are one
    ``filter_vmap``-built stack applied with ``lax.scan``."""
    token_embedder: eqx.nn.Embedding
    position_embedder: eqx.nn.Embedding
    blocks: Any
    ln_f: eqx.nn.LayerNorm
    unembed: eqx.nn.Linear
    scan: bool = eqx.field(static=True)

    def __init__(self, vocab, seq, d, heads, layers, key, scan=False):
      k1, k2, k3, k4 = jax.random.split(key, 4)
      self.token_embedder = eqx.nn.Embedding(vocab, d, key=k1)
      self.position_embedder = eqx.nn.Embedding(seq, d, key=k2)
      keys = jax.random.split(k3, layers)
      if scan:
        self.blocks = eqx.filter_vmap(lambda k: Block(d, heads, k))(keys)
      else:
        self.blocks = [Block(d, heads, k) for k in keys]
      self.ln_f = eqx.nn.LayerNorm(d)
      self.unembed = eqx.nn.Linear(d, vocab, use_bias=False, key=k4)
      self.scan = scan

    def __call__(self, tokens):  # one sequence (seq,)
      x = jax.vmap(self.token_embedder)(tokens)
      x = x + jax.vmap(self.position_embedder)(jnp.arange(tokens.shape[0]))
      if self.scan:
        dynamic, static = eqx.partition(self.blocks, eqx.is_array)

        def body(x, layer):
          return eqx.combine(layer, static)(x), None

        x, _ = jax.lax.scan(body, x, dynamic)
      else:
        for block in self.blocks:
          x = block(x)
      return jax.vmap(self.unembed)(jax.vmap(self.ln_f)(x))

  return Block, Transformer


def _eqx_block_expected(prefix, stacked):
  """A Block's leaves; ``stacked``: a leading layer axis (a batch axis)."""
  s = 1 if stacked else 0
  out = {}
  for ln in ("ln1", "ln2"):
    out[f"{prefix}/{ln}/weight"] = ADAMW
    out[f"{prefix}/{ln}/bias"] = ADAMW
  # MultiheadAttention's projections: Linear weights (out, in), one product
  # each (heads are a reshape of the output); no biases by default.
  for proj in ("query_proj", "key_proj", "value_proj", "output_proj"):
    out[f"{prefix}/attention/{proj}/weight"] = muon(s + 1, s)
  for lin in ("mlp_up", "mlp_down"):
    out[f"{prefix}/{lin}/weight"] = muon(s + 1, s)
    out[f"{prefix}/{lin}/bias"] = ADAMW
  return out


def _eqx_transformer(name, scan):
  _, Transformer = _eqx_modules()
  layers = 2
  make = lambda: Transformer(VOCAB, SEQ, 16, 2, layers, jax.random.key(0),
                             scan=scan)
  tokens = _ints(VOCAB, (BATCH, SEQ + 1))
  fwd = lambda m, t: jax.vmap(m)(t)
  expected = {
      "token_embedder/weight": ADAMW,     # looked up
      "position_embedder/weight": ADAMW,  # looked up
      "ln_f/weight": ADAMW,
      "ln_f/bias": ADAMW,
      "unembed/weight": ADAMW,            # the head: its product is the logits
  }
  if scan:
    expected |= _eqx_block_expected("blocks", stacked=True)
  else:
    for i in range(layers):
      expected |= _eqx_block_expected(f"blocks/{i}", stacked=False)
  return _eqx_case(name, make, fwd, (tokens[:, :-1],),
                   lambda f: _lm_loss(f, tokens), expected,
                   ("ln1/weight", "ln2/weight", "ln_f/weight"),
                   "; eqx.filter_vmap + jax.lax.scan stack" if scan else "")


def equinox_transformer() -> ModelCase:
  """Embedding / MultiheadAttention / LayerNorm / Linear, a list of blocks."""
  return _eqx_transformer("equinox-transformer", scan=False)


def equinox_scan() -> ModelCase:
  """The same transformer with its blocks built by ``eqx.filter_vmap`` and
  applied by ``jax.lax.scan``: axis 0 of every block leaf is the layer, a
  batch axis; the stacked LayerNorm ``weight (layers, d)`` is AdamW's."""
  return _eqx_transformer("equinox-scan", scan=True)


def equinox_cnn() -> ModelCase:
  """Two ``eqx.nn.Conv2d`` (weight ``(out, in, kh, kw)``), a linear head."""
  eqx = pytest.importorskip("equinox")

  class CNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
      k1, k2, k3 = jax.random.split(key, 3)
      self.conv1 = eqx.nn.Conv2d(1, 8, 3, padding=1, key=k1)
      self.conv2 = eqx.nn.Conv2d(8, 16, 3, stride=2, key=k2)
      self.head = eqx.nn.Linear(16, 4, key=k3)

    def __call__(self, x):  # one image (1, 8, 8)
      x = jax.nn.relu(self.conv1(x))
      x = jax.nn.relu(self.conv2(x))
      return self.head(x.mean(axis=(1, 2)))

  make = lambda: CNN(jax.random.key(0))
  x, y = _floats((BATCH * 2, 1, 8, 8)), _ints(4, (BATCH * 2,))
  fwd = lambda m, x: jax.vmap(m)(x)
  expected = {
      # conv_general_dilated contracts in-channels and the kernel window.
      "conv1/weight": muon((1, 2, 3), 0),
      "conv1/bias": ADAMW,                # (out, 1, 1), added
      "conv2/weight": muon((1, 2, 3), 0),
      "conv2/bias": ADAMW,
      "head/weight": ADAMW,               # the output layer
      "head/bias": ADAMW,
  }
  return _eqx_case("equinox-cnn", make, fwd, (x,),
                   lambda f: lambda p: _xent(f(p, x), y), expected, ones=())


# ------------------------------------------------------------- HF-Flax ----

HF_SOURCE = ("transformers 4.57.6 (tiny configs, random init, no download): "
             "models/{}")


def _hf_case(name, cls_name, config, expected, ones, source, loss_kind="lm"):
  """``params`` is the model's params dict (``model.params`` shapes, built
  abstractly with ``_do_init=False`` and filled by :func:`_fill`);
  ``forward(p, input_ids) = model(input_ids, params=p).logits``."""
  transformers = pytest.importorskip("transformers")
  cls = getattr(transformers, cls_name)
  model = cls(config, _do_init=False)
  abstract = jax.eval_shape(
      lambda: model.init_weights(jax.random.PRNGKey(0), (1, SEQ)))
  params = _fill(abstract, expected, ones)

  def forward(p, input_ids):
    return model(input_ids, params=p).logits

  vocab = config.vocab_size
  if loss_kind == "lm":
    tokens = _ints(vocab, (BATCH, SEQ + 1))
    args, loss = (tokens[:, :-1],), _lm_loss(forward, tokens)
  else:  # masked LM: predict fixed random tokens at every position
    inputs, targets = _ints(vocab, (BATCH, SEQ)), _ints(vocab, (BATCH, SEQ), 1)
    args, loss = (inputs,), lambda p: _xent(forward(p, inputs), targets)
  return ModelCase(name, HF_SOURCE.format(source), params, forward, args,
                   loss, expected)


def hf_gpt2() -> ModelCase:
  """``FlaxGPT2LMHeadModel``: ``FlaxConv1D`` kernels are ``(out, in)``."""
  transformers = pytest.importorskip("transformers")
  config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16,
                                   n_embd=16, n_layer=2, n_head=2)
  expected = {
      # Looked up, and (tie_word_embeddings) the head: `wte.T` is lm_head's
      # kernel.
      "transformer/wte/embedding": ADAMW,
      "transformer/wpe/embedding": ADAMW,
      "transformer/ln_f/scale": ADAMW,
      "transformer/ln_f/bias": ADAMW,
  }
  for i in range(2):
    h = f"transformer/h/{i}"
    for ln in ("ln_1", "ln_2"):
      expected[f"{h}/{ln}/scale"] = ADAMW
      expected[f"{h}/{ln}/bias"] = ADAMW
    # FlaxConv1D: param (features, in); `lax.dot_general(inputs,
    # kernel.transpose(), (((inputs.ndim - 1,), (0,)), ...))` contracts the
    # kernel's axis 1. c_attn (3d, d) is one product (q, k, v split after).
    for lin in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
      expected[f"{h}/{lin}/kernel"] = muon(1, 0)
      expected[f"{h}/{lin}/bias"] = ADAMW
  return _hf_case("hf-gpt2", "FlaxGPT2LMHeadModel", config, expected,
                  ("ln_1/scale", "ln_2/scale", "ln_f/scale"),
                  "gpt2/modeling_flax_gpt2.py (FlaxConv1D, "
                  "FlaxGPT2LMHeadModule: tied lm_head)")


def _llama(name, vocab, intermediate):
  transformers = pytest.importorskip("transformers")
  config = transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=16, intermediate_size=intermediate,
      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
      max_position_embeddings=16)
  expected = {
      "model/embed_tokens/embedding": ADAMW,  # nn.Embed, looked up
      "model/norm/weight": ADAMW,             # FlaxLlamaRMSNorm
      "lm_head/kernel": ADAMW,                # untied nn.Dense head
  }
  for i in range(2):
    layer = f"model/layers/{i}"
    expected[f"{layer}/input_layernorm/weight"] = ADAMW
    expected[f"{layer}/post_attention_layernorm/weight"] = ADAMW
    # nn.Dense kernels (in, out); q (d, heads*hd), k/v (d, kv_heads*hd),
    # reshaped into heads after the product.
    for lin in ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj",
                "self_attn/o_proj", "mlp/gate_proj", "mlp/up_proj",
                "mlp/down_proj"):
      expected[f"{layer}/{lin}/kernel"] = muon(0, 1)
  return _hf_case(name, "FlaxLlamaForCausalLM", config, expected,
                  ("layernorm/weight", "norm/weight"),
                  "llama/modeling_flax_llama.py (FlaxLlamaMLP, "
                  "FlaxLlamaAttention, FlaxLlamaForCausalLMModule)")


def hf_llama() -> ModelCase:
  """``FlaxLlamaForCausalLM``, grouped-query attention (1 kv head)."""
  return _llama("hf-llama", VOCAB, 32)


def hf_llama_vocab_collision() -> ModelCase:
  """``intermediate_size == vocab_size``: ``gate_proj``/``up_proj``
  ``(16, 32)`` have the head's fan-out (issue 19's vocabulary collision)."""
  return _llama("hf-llama-vocab-collision", 32, 32)


def hf_bert() -> ModelCase:
  """``FlaxBertForMaskedLM``: the decoder is the tied word embedding."""
  transformers = pytest.importorskip("transformers")
  config = transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
      num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
  emb = "bert/embeddings"
  expected = {
      # Looked up, and (tie_word_embeddings) the decoder's kernel `.T`.
      f"{emb}/word_embeddings/embedding": ADAMW,
      f"{emb}/position_embeddings/embedding": ADAMW,
      f"{emb}/token_type_embeddings/embedding": ADAMW,
      f"{emb}/LayerNorm/scale": ADAMW,
      f"{emb}/LayerNorm/bias": ADAMW,
      # FlaxBertPredictionHeadTransform: a hidden Dense + gelu + LayerNorm
      # before the tied decoder, so a Muon matrix despite living in `cls`.
      "cls/predictions/transform/dense/kernel": muon(0, 1),
      "cls/predictions/transform/dense/bias": ADAMW,
      "cls/predictions/transform/LayerNorm/scale": ADAMW,
      "cls/predictions/transform/LayerNorm/bias": ADAMW,
      "cls/predictions/bias": ADAMW,  # the decoder's (vocab,) bias
  }
  for i in range(2):
    layer = f"bert/encoder/layer/{i}"
    for lin in ("attention/self/query", "attention/self/key",
                "attention/self/value", "attention/output/dense",
                "intermediate/dense", "output/dense"):
      expected[f"{layer}/{lin}/kernel"] = muon(0, 1)  # nn.Dense (in, out)
      expected[f"{layer}/{lin}/bias"] = ADAMW
    for ln in ("attention/output/LayerNorm", "output/LayerNorm"):
      expected[f"{layer}/{ln}/scale"] = ADAMW
      expected[f"{layer}/{ln}/bias"] = ADAMW
  return _hf_case("hf-bert", "FlaxBertForMaskedLM", config, expected,
                  ("LayerNorm/scale",),
                  "bert/modeling_flax_bert.py (FlaxBertSelfAttention, "
                  "FlaxBertLMPredictionHead: shared_embedding.T)",
                  loss_kind="mlm")


# ---------------------------------------------------- Flax NNX and Linen ----

FLAX_SOURCE = ("flax 0.12.8: flax/nnx/nn/linear.py (Linear kernel (in, out), "
               "LinearGeneral, Embed: a lookup), flax/nnx/nn/attention.py "
               "(MultiHeadAttention: q/k/v LinearGeneral kernels (in, heads, "
               "head_dim), out (heads, head_dim, out) contracting both), "
               "flax/nnx/nn/normalization.py, flax/linen/linear.py, "
               "flax/linen/attention.py")


def _nnx_case(name, make, expected, ones, vocab, seq, source=""):
  """``params`` is the ``nnx.State`` of ``nnx.split(model, nnx.Param,
  ...)`` (built with ``nnx.eval_shape``, filled by :func:`_fill`);
  ``forward(p, tokens) = nnx.merge(graphdef, p, rest)(tokens)``."""
  from flax import nnx

  graphdef, abstract, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  params = _fill(abstract, expected, ones)

  def forward(p, tokens):
    return nnx.merge(graphdef, p, rest)(tokens)

  tokens = _ints(vocab, (BATCH, seq + 1))
  return ModelCase(name, FLAX_SOURCE + source, params, forward,
                   (tokens[:, :-1],), _lm_loss(forward, tokens), expected)


def _nnx_block_expected(prefix, stacked):
  """tests/test_flax_models.py's ``Block``; ``stacked``: a leading layer
  axis (``nnx.vmap``-created, ``nnx.scan``-applied: a batch axis)."""
  s = 1 if stacked else 0
  out = {
      f"{prefix}/ln1/scale": ADAMW,
      f"{prefix}/ln1/bias": ADAMW,
      f"{prefix}/ln2/scale": ADAMW,  # RMSNorm
      # LinearGeneral q/k/v: dot_general over the kernel's `in` axis; the
      # (heads, head_dim) axes are both free (one product, not per head).
      f"{prefix}/attn/out/kernel": muon((s, s + 1), s + 2),
      f"{prefix}/attn/out/bias": ADAMW,
      f"{prefix}/up/kernel": muon(s, s + 1),
      f"{prefix}/up/bias": ADAMW,
      f"{prefix}/down/kernel": muon(s, s + 1),
      f"{prefix}/down/bias": ADAMW,
  }
  for proj in ("query", "key", "value"):
    out[f"{prefix}/attn/{proj}/kernel"] = muon(s, (s + 1, s + 2))
    out[f"{prefix}/attn/{proj}/bias"] = ADAMW  # (heads, head_dim), added
  return out


_NNX_LM_TOP = {
    "tok_emb/embedding": ADAMW,
    "pos_emb/embedding": ADAMW,
    "ln_f/scale": ADAMW,
    "ln_f/bias": ADAMW,
    "unembed/kernel": ADAMW,  # the head
    "unembed/bias": ADAMW,
}
_NNX_ONES = ("ln1/scale", "ln2/scale", "ln_f/scale")


@functools.cache
def _nnx_plain_lm():
  from flax import nnx

  from tests import test_flax_models as tfm

  class NnxPlainLM(nnx.Module):
    """tests/test_flax_models.py's ``Block`` in a plain list of layers."""

    def __init__(self, rngs):
      self.tok_emb = nnx.Embed(tfm.VOCAB, tfm.D, rngs=rngs)
      self.pos_emb = nnx.Embed(tfm.SEQ, tfm.D, rngs=rngs)
      self.blocks = nnx.List([tfm.Block(rngs) for _ in range(2)])
      self.ln_f = nnx.LayerNorm(tfm.D, rngs=rngs)
      self.unembed = nnx.Linear(tfm.D, tfm.VOCAB, rngs=rngs)

    def __call__(self, tokens):
      x = self.tok_emb(tokens) + self.pos_emb(jnp.arange(tokens.shape[-1]))
      for block in self.blocks:
        x = block(x)
      return self.unembed(self.ln_f(x))

  return NnxPlainLM


def nnx_transformer() -> ModelCase:
  """NNX Embed / MultiHeadAttention / LayerNorm / Linear, a list of blocks."""
  from flax import nnx

  from tests import test_flax_models as tfm

  expected = dict(_NNX_LM_TOP)
  for i in range(2):
    expected |= _nnx_block_expected(f"blocks/{i}", stacked=False)
  return _nnx_case("nnx-transformer", lambda: _nnx_plain_lm()(nnx.Rngs(0)),
                   expected, _NNX_ONES, tfm.VOCAB, tfm.SEQ,
                   "; tests/test_flax_models.py's Block")


def nnx_scan() -> ModelCase:
  """tests/test_flax_models.py's ``NnxLM``: ``nnx.vmap``-created blocks
  applied with ``nnx.scan``; axis 0 of every block leaf is the layer."""
  from flax import nnx

  from tests import test_flax_models as tfm

  expected = _NNX_LM_TOP | _nnx_block_expected("layers", stacked=True)
  return _nnx_case("nnx-scan", lambda: tfm.NnxLM(nnx.Rngs(0)), expected,
                   _NNX_ONES, tfm.VOCAB, tfm.SEQ,
                   "; tests/test_flax_models.py's NnxLM (nnx.vmap, nnx.scan)")


def linen_scan() -> ModelCase:
  """tests/test_flax_models.py's ``LinenLM``: ``nn.scan`` over the blocks
  (``variable_axes={"params": 0}``); Linen's auto-named ``Dense_0`` head."""
  from tests import test_flax_models as tfm

  model = tfm.LinenLM()
  tokens = _ints(tfm.VOCAB, (BATCH, tfm.SEQ + 1))
  attn = "layers/MultiHeadDotProductAttention_0"
  expected = {
      "tok_emb/embedding": ADAMW,
      "pos_emb/embedding": ADAMW,
      "layers/LayerNorm_0/scale": ADAMW,   # (layers, d)
      "layers/LayerNorm_0/bias": ADAMW,
      "layers/RMSNorm_0/scale": ADAMW,
      # Linen names the outer Dense(D) first (built before its input):
      # Dense_0 is the down-projection (L, 4d, d), Dense_1 the up (L, d, 4d).
      "layers/Dense_0/kernel": muon(1, 2),
      "layers/Dense_0/bias": ADAMW,
      "layers/Dense_1/kernel": muon(1, 2),
      "layers/Dense_1/bias": ADAMW,
      f"{attn}/out/kernel": muon((1, 2), 3),   # (L, heads, head_dim, d)
      f"{attn}/out/bias": ADAMW,
      "LayerNorm_0/scale": ADAMW,
      "LayerNorm_0/bias": ADAMW,
      "Dense_0/kernel": ADAMW,             # the head
      "Dense_0/bias": ADAMW,
  }
  for proj in ("query", "key", "value"):
    expected[f"{attn}/{proj}/kernel"] = muon(1, (2, 3))  # (L, d, heads, hd)
    expected[f"{attn}/{proj}/bias"] = ADAMW
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            tokens[:, :-1])["params"]
  params = _fill(abstract, expected, ("LayerNorm_0/scale", "RMSNorm_0/scale"))
  forward = lambda p, t: model.apply({"params": p}, t)
  return ModelCase(
      "linen-scan", FLAX_SOURCE + "; tests/test_flax_models.py's LinenLM "
      "(flax/linen/transforms.py scan)", params, forward, (tokens[:, :-1],),
      _lm_loss(forward, tokens), expected)


def sharded_train_gpt() -> ModelCase:
  """The model of examples/sharded_train.py at its defaults: examples/tasks/
  lm.py's ``GPT(GPTConfig(seq_len=64, d_model=64, n_layers=2))``, byte
  vocabulary 256, so every ``mlp/fc/kernel`` is ``(64, 256)`` -- the head's
  fan-out (issue 19's vocabulary collision). Imported from examples/tasks/
  lm.py, where sharded_train.py imports it from (sharded_train.py parses
  ``sys.argv`` when imported)."""
  from flax import nnx

  from examples.tasks.lm import GPT, GPTConfig

  config = GPTConfig(seq_len=64, d_model=64, n_layers=2)  # sharded_train's
  expected = {
      "embed/embedding": ADAMW,   # nnx.Embed, looked up
      "pos_embedding": ADAMW,     # sliced and added
      "ln_f/scale": ADAMW,
      "ln_f/bias": ADAMW,
      "head/kernel": ADAMW,       # the head (64, 256)
  }
  for i in range(config.n_layers):
    b = f"blocks/{i}"
    for ln in ("ln1", "ln2"):
      expected[f"{b}/{ln}/scale"] = ADAMW
      expected[f"{b}/{ln}/bias"] = ADAMW
    for lin in ("attn/q", "attn/k", "attn/v", "attn/out"):
      expected[f"{b}/{lin}/kernel"] = muon(0, 1)   # nnx.Linear, no bias
    expected[f"{b}/mlp/fc/kernel"] = muon(0, 1)    # (64, 256), hidden
    expected[f"{b}/mlp/fc/bias"] = ADAMW
    expected[f"{b}/mlp/proj/kernel"] = muon(0, 1)
    expected[f"{b}/mlp/proj/bias"] = ADAMW
  return _nnx_case("sharded-train-gpt", lambda: GPT(config, nnx.Rngs(0)),
                   expected, ("ln1/scale", "ln2/scale", "ln_f/scale"),
                   config.vocab_size, SEQ,
                   "; examples/tasks/lm.py GPT at examples/sharded_train.py's "
                   "defaults (--d-model 64 --layers 2 --seq-len 64)")


# ------------------------------------------------------- Gemma-shaped ----

GEMMA_SOURCE = (
    "Gemma-shaped Linen modules written from google-deepmind/gemma 4.1.0 "
    "(commit 7691fd4e7f26): gemma/gm/nn/_layers.py (Einsum: param `w` of "
    "`shape`, `jnp.einsum(eqn, x, w)`; RMSNorm: `scale`, x * (1 + scale)), "
    "gemma/gm/nn/_modules.py (Embedder: `input_embedding`, encode = lookup, "
    "decode = `x @ table.T`; Attention: qkv_einsum 'BTD,SNDH->SBTNH' when "
    "num_kv_heads == num_heads, else q_einsum 'BTD,NDH->BTNH' and kv_einsum "
    "'BSD,CKDH->CBSKH', attn_vec_einsum 'BTNH,NHD->BTD', GQA logits "
    "'BTKGH,BSKH->BTKGS'; FeedForward: gating_einsum '...F,NHF->...NH' "
    "(transposed) or '...F,NFH->...NH', linear '...H,HF->...F', both "
    "share_scope'd into `mlp`; Block norms), gemma/gm/nn/_transformer.py "
    "(embedder, layer_{i}, final_norm, logits = embedder.decode), "
    "gemma/gm/nn/_gemma.py (Gemma3_1B: qk-norm, post-norms, "
    "transpose_gating_einsum=True)")


@functools.cache
def _gemma_modules():
  import flax.linen as nn

  class Einsum(nn.Module):
    shape: tuple
    weight_name: str = "w"

    @nn.compact
    def __call__(self, eqn, x):
      w = self.param(self.weight_name, nn.initializers.normal(), self.shape)
      return jnp.einsum(eqn, x, w)

  class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
      x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + 1e-6)
      return x * (1 + scale)

  class Embedder(nn.Module):
    vocab_size: int
    embed_dim: int

    def setup(self):
      self.input_embedding_table = self.param(
          "input_embedding", nn.initializers.normal(),
          (self.vocab_size, self.embed_dim))

    def encode(self, x):
      return self.input_embedding_table[(x,)] * jnp.sqrt(self.embed_dim)

    def decode(self, x):
      return jnp.dot(x, self.input_embedding_table.T)

  class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    features: int
    head_dim: int
    use_qk_norm: bool

    def setup(self):
      n, k, d, h = self.num_heads, self.num_kv_heads, self.features, self.head_dim
      self.attn_vec_einsum = Einsum((n, h, d))
      if n == k:
        self.qkv_einsum = Einsum((3, n, d, h))
      else:
        self.q_einsum = Einsum((n, d, h))
        self.kv_einsum = Einsum((2, k, d, h))
      if self.use_qk_norm:
        self._query_norm = RMSNorm()
        self._key_norm = RMSNorm()

    def __call__(self, x):
      n, k = self.num_heads, self.num_kv_heads
      if n == k:
        q, key, value = self.qkv_einsum("BTD,SNDH->SBTNH", x)
      else:
        q = self.q_einsum("BTD,NDH->BTNH", x)
        key, value = self.kv_einsum("BSD,CKDH->CBSKH", x)
      if self.use_qk_norm:
        q, key = self._query_norm(q), self._key_norm(key)
      q = q * self.head_dim ** -0.5
      b, t, _, h = q.shape
      q = q.reshape(b, t, k, n // k, h)  # groups of query heads per kv head
      logits = jnp.einsum("BTKGH,BSKH->BTKGS", q, key)
      causal = jnp.tril(jnp.ones((t, t), bool))[None, :, None, None, :]
      probs = jax.nn.softmax(jnp.where(causal, logits, -1e30), axis=-1)
      encoded = jnp.einsum("BTKGS,BSKH->BTKGH", probs, value)
      return self.attn_vec_einsum("BTNH,NHD->BTD", encoded.reshape(b, t, n, h))

  class FeedForward(nn.Module):
    features: int
    hidden_dim: int
    transpose_gating_einsum: bool

    @nn.compact
    def __call__(self, x):
      if self.transpose_gating_einsum:
        eq, shape = "...F,NHF->...NH", (2, self.hidden_dim, self.features)
      else:
        eq, shape = "...F,NFH->...NH", (2, self.features, self.hidden_dim)
      gating = Einsum(shape, weight_name="gating_einsum")
      nn.share_scope(self, gating)
      gate = gating(eq, x)
      activations = nn.gelu(gate[..., 0, :]) * gate[..., 1, :]
      linear = Einsum((self.hidden_dim, self.features), weight_name="linear")
      nn.share_scope(self, linear)
      return linear("...H,HF->...F", activations)

  class Block(nn.Module):
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    head_dim: int
    hidden_dim: int
    post_norms: bool
    use_qk_norm: bool
    transpose_gating_einsum: bool

    def setup(self):
      self.pre_attention_norm = RMSNorm()
      self.attn = Attention(self.num_heads, self.num_kv_heads, self.embed_dim,
                            self.head_dim, self.use_qk_norm)
      if self.post_norms:
        self.post_attention_norm = RMSNorm()
        self.post_ffw_norm = RMSNorm()
      self.pre_ffw_norm = RMSNorm()
      self.mlp = FeedForward(self.embed_dim, self.hidden_dim,
                             self.transpose_gating_einsum)

    def __call__(self, x):
      a = self.attn(self.pre_attention_norm(x))
      if self.post_norms:
        a = self.post_attention_norm(a)
      x = x + a
      f = self.mlp(self.pre_ffw_norm(x))
      if self.post_norms:
        f = self.post_ffw_norm(f)
      return x + f

  class Transformer(nn.Module):
    vocab: int
    layers: int
    block: dict

    def setup(self):
      self.embedder = Embedder(self.vocab, self.block["embed_dim"])
      self.blocks = [Block(**self.block, name=f"layer_{i}")
                     for i in range(self.layers)]
      self.final_norm = RMSNorm()

    def __call__(self, tokens):
      x = self.embedder.encode(tokens)
      for block in self.blocks:
        x = block(x)
      return self.embedder.decode(self.final_norm(x))

  return Transformer


def _gemma(name, num_heads, num_kv_heads, gemma3):
  d, h, f, layers = 16, 8, 32, 2
  block = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, embed_dim=d,
               head_dim=h, hidden_dim=f, post_norms=gemma3,
               use_qk_norm=gemma3, transpose_gating_einsum=gemma3)
  model = _gemma_modules()(VOCAB, layers, block)
  tokens = _ints(VOCAB, (BATCH, SEQ + 1))
  # The tied table: looked up by `encode` and the head by `decode`.
  expected = {"embedder/input_embedding": ADAMW, "final_norm/scale": ADAMW}
  for i in range(layers):
    layer = f"layer_{i}"
    norms = ["pre_attention_norm", "pre_ffw_norm"]
    if gemma3:
      norms += ["post_attention_norm", "post_ffw_norm", "attn/_query_norm",
                "attn/_key_norm"]
    for norm in norms:
      expected[f"{layer}/{norm}/scale"] = ADAMW
    if num_heads == num_kv_heads:
      # 'BTD,SNDH->SBTNH': D contracted; S (q, k, v) unpacked after the
      # product: three matrices, a batch axis; N, H free.
      expected[f"{layer}/attn/qkv_einsum/w"] = muon(2, (1, 3))
    else:
      # 'BTD,NDH->BTNH': D contracted, N and H free (one product).
      expected[f"{layer}/attn/q_einsum/w"] = muon(1, (0, 2))
      # 'BSD,CKDH->CBSKH': D contracted; C (k, v) unpacked after: batch.
      expected[f"{layer}/attn/kv_einsum/w"] = muon(2, (1, 3))
    # 'BTNH,NHD->BTD': N and H contracted.
    expected[f"{layer}/attn/attn_vec_einsum/w"] = muon((0, 1), 2)
    # gating (2, F, D) '...F,NHF->...NH' (Gemma 3) or (2, D, F)
    # '...F,NFH->...NH': the model's features contracted, the hidden width
    # free; N (gate, up) indexed apart after the product: a batch axis.
    expected[f"{layer}/mlp/gating_einsum"] = (
        muon(2, 1) if gemma3 else muon(1, 2))
    expected[f"{layer}/mlp/linear"] = muon(0, 1)  # '...H,HF->...F'
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            tokens[:, :-1])["params"]
  params = _fill(abstract, expected)  # RMSNorm scales start at 0 (1 + s)
  forward = lambda p, t: model.apply({"params": p}, t)
  return ModelCase(name, GEMMA_SOURCE, params, forward, (tokens[:, :-1],),
                   _lm_loss(forward, tokens), expected)


def gemma3_shaped() -> ModelCase:
  """Gemma 3's layout (1B config, shrunk): grouped-query attention (4 query
  heads, 2 kv heads) with q_einsum / kv_einsum, qk-norm, post-norms, the
  transposed gating einsum ``(2, hidden, features)``, tied embedding."""
  return _gemma("gemma3-shaped", 4, 2, gemma3=True)


def gemma_qkv_shaped() -> ModelCase:
  """Gemma 1's multi-head layout (num_kv_heads == num_heads): one
  ``qkv_einsum (3, N, D, H)``, gating ``(2, features, hidden)``."""
  return _gemma("gemma-qkv-shaped", 2, 2, gemma3=False)


# ----------------------------------------------------- MaxText-shaped ----

MAXTEXT_SOURCE = (
    "MaxText-shaped Linen models written from AI-Hypercomputer/maxtext "
    "(commit e591f30cbbf2): src/maxtext/layers/linears.py (DenseGeneral: "
    "kernel in_features_shape + out_features_shape, lax.dot_general "
    "contracting the inputs' `axis` with the kernel's leading axes; MlpBlock: "
    "wi_0, wi_1 (emb, mlp) for mlp_activations ['silu', 'linear'], wo (mlp, "
    "emb)), attentions.py (query/key/value kernels (emb, heads, head_dim), "
    "out (heads, head_dim, emb) with axis=(-2, -1)), moe.py (RoutedMoE: "
    "GateLogit kernel (emb, experts); wi_0/wi_1 (experts, emb, mlp), wo "
    "(experts, mlp, emb); dense_matmul einsums 'BSM,BSEC -> EBCM', "
    "'EBCM,EMH -> EBCH', 'EBCH,EHM -> EBCM', 'EBCM,BSEC -> BSM'), "
    "decoders.py (scan_decoder_layers: nn.scan with variable_axes "
    "{'params': cfg.param_scan_axis}, name 'layers'; decoder_norm; "
    "logits_dense (emb, vocab) as logits_via_embedding is false), "
    "normalizations.py (RMSNorm `scale`), embeddings.py (Embed `embedding`, "
    "a lookup), models.py (`token_embedder`), models/llama2.py and "
    "models/mixtral.py (layer names), configs/base.yml (scan_layers: true, "
    "param_scan_axis: 1)")
MAXTEXT_LAYERS, MAXTEXT_EXPERTS = 2, 4


def _dense(x, kernel, n):
  """DenseGeneral's product: the last ``n`` axes of ``x`` with the
  kernel's first ``n``."""
  axes = tuple(range(x.ndim - n, x.ndim))
  return jax.lax.dot_general(x, kernel, ((axes, tuple(range(n))), ((), ())))


@functools.cache
def _maxtext_modules():
  import flax.linen as nn

  normal = nn.initializers.normal()

  class DenseGeneral(nn.Module):
    in_shape: tuple
    out_shape: tuple

    @nn.compact
    def __call__(self, x):
      kernel = self.param("kernel", normal, self.in_shape + self.out_shape)
      return _dense(x, kernel, len(self.in_shape))

  class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
      scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
      x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + 1e-6)
      return x * scale

  class Attention(nn.Module):
    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
      emb, hd = x.shape[-1], (self.heads, self.head_dim)
      q = DenseGeneral((emb,), hd, name="query")(x) * self.head_dim ** -0.5
      k = DenseGeneral((emb,), hd, name="key")(x)
      v = DenseGeneral((emb,), hd, name="value")(x)
      t = x.shape[1]
      logits = jnp.einsum("btnh,bsnh->bnts", q, k)
      causal = jnp.tril(jnp.ones((t, t), bool))
      probs = jax.nn.softmax(jnp.where(causal, logits, -1e30), axis=-1)
      y = jnp.einsum("bnts,bsnh->btnh", probs, v)
      return DenseGeneral(hd, (emb,), name="out")(y)

  class MlpBlock(nn.Module):
    mlp: int

    @nn.compact
    def __call__(self, x):
      emb = x.shape[-1]
      h = (nn.silu(DenseGeneral((emb,), (self.mlp,), name="wi_0")(x))
           * DenseGeneral((emb,), (self.mlp,), name="wi_1")(x))
      return DenseGeneral((self.mlp,), (emb,), name="wo")(h)

  class RoutedMoE(nn.Module):
    mlp: int
    experts: int
    top_k: int = 2

    @nn.compact
    def __call__(self, x):
      b, s, m = x.shape
      e, h = self.experts, self.mlp
      gate_logits = DenseGeneral((m,), (e,), name="gate")(x)
      top, index = jax.lax.top_k(gate_logits, self.top_k)
      weights = jnp.sum(jax.nn.softmax(top, axis=-1)[..., None]
                        * jax.nn.one_hot(index, e), axis=-2)  # (b, s, e)
      # Capacity = the sequence: each token its own slot in each expert.
      routed = jnp.sum(jax.nn.one_hot(index, e), axis=-2)      # (b, s, e)
      dispatch = routed[..., None] * jnp.eye(s)[None, :, None, :]  # BSEC
      combine = dispatch * weights[..., None]
      wi_0 = self.param("wi_0", normal, (e, m, h))
      wi_1 = self.param("wi_1", normal, (e, m, h))
      wo = self.param("wo", normal, (e, h, m))
      xs = jnp.einsum("BSM,BSEC->EBCM", x, dispatch)
      layer_w0 = jnp.einsum("EBCM,EMH->EBCH", xs, wi_0)
      layer_w1 = jnp.einsum("EBCM,EMH->EBCH", xs, wi_1)
      out = jnp.einsum("EBCH,EHM->EBCM", nn.silu(layer_w0) * layer_w1, wo)
      return jnp.einsum("EBCM,BSEC->BSM", out, combine)

  class DecoderLayer(nn.Module):
    heads: int
    head_dim: int
    mlp: int
    experts: int  # 0: dense (llama2.py), else RoutedMoE (mixtral.py)

    @nn.compact
    def __call__(self, x):
      h = RMSNorm(name="pre_self_attention_layer_norm")(x)
      x = x + Attention(self.heads, self.head_dim, name="self_attention")(h)
      h = RMSNorm(name="post_self_attention_layer_norm")(x)
      if self.experts:
        return x + RoutedMoE(self.mlp, self.experts, name="MoeBlock_0")(h), None
      return x + MlpBlock(self.mlp, name="mlp")(h), None

  class Decoder(nn.Module):
    vocab: int
    layer: dict

    @nn.compact
    def __call__(self, x):
      stack = nn.scan(DecoderLayer, variable_axes={"params": 1},
                      split_rngs={"params": True}, in_axes=(),
                      length=MAXTEXT_LAYERS)
      x, _ = stack(**self.layer, name="layers")(x)
      x = RMSNorm(name="decoder_norm")(x)
      return DenseGeneral((x.shape[-1],), (self.vocab,), name="logits_dense")(x)

  class Embed(nn.Module):
    vocab: int
    emb: int

    @nn.compact
    def __call__(self, tokens):
      table = self.param("embedding", normal, (self.vocab, self.emb))
      return table[tokens]

  class Transformer(nn.Module):
    """token_embedder (models.py) and decoder (decoders.py)."""

    vocab: int
    emb: int
    layer: dict

    def setup(self):
      self.token_embedder = Embed(self.vocab, self.emb)
      self.decoder = Decoder(self.vocab, self.layer)

    def __call__(self, tokens):
      return self.decoder(self.token_embedder(tokens))

  return Transformer


def _maxtext(name, experts):
  emb, heads, head_dim, mlp = 16, 2, 8, 32
  layer = dict(heads=heads, head_dim=head_dim, mlp=mlp, experts=experts)
  model = _maxtext_modules()(VOCAB, emb, layer)
  tokens = _ints(VOCAB, (BATCH, SEQ + 1))
  lay = "decoder/layers"
  expected = {
      "token_embedder/embedding": ADAMW,       # looked up
      "decoder/decoder_norm/scale": ADAMW,
      "decoder/logits_dense/kernel": ADAMW,    # the head (emb, vocab)
      # nn.scan's param_scan_axis=1: every layer leaf has the layer axis at
      # position 1 (a batch axis); norm scales become (emb, layers).
      f"{lay}/pre_self_attention_layer_norm/scale": ADAMW,
      f"{lay}/post_self_attention_layer_norm/scale": ADAMW,
      # (emb, L, heads, head_dim): emb contracted, heads and head_dim free.
      f"{lay}/self_attention/query/kernel": muon(0, (2, 3)),
      f"{lay}/self_attention/key/kernel": muon(0, (2, 3)),
      f"{lay}/self_attention/value/kernel": muon(0, (2, 3)),
      # (heads, L, head_dim, emb): heads and head_dim contracted.
      f"{lay}/self_attention/out/kernel": muon((0, 2), 3),
  }
  if experts:
    moe = f"{lay}/MoeBlock_0"
    # The router (emb, L, experts): a product with the activations whose
    # result feeds top-k and the combine weights, not the output.
    expected[f"{moe}/gate/kernel"] = muon(0, 2)
    # (experts, L, emb, mlp) / (experts, L, mlp, emb): the expert axis is
    # a dot_general batch axis of 'EBCM,EMH->EBCH'; the layer axis too.
    expected[f"{moe}/wi_0"] = muon(2, 3)
    expected[f"{moe}/wi_1"] = muon(2, 3)
    expected[f"{moe}/wo"] = muon(2, 3)
  else:
    # (emb, L, mlp) and (mlp, L, emb).
    for w in ("wi_0", "wi_1", "wo"):
      expected[f"{lay}/mlp/{w}/kernel"] = muon(0, 2)
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            tokens[:, :-1])["params"]
  params = _fill(abstract, expected, ("norm/scale",))
  forward = lambda p, t: model.apply({"params": p}, t)
  return ModelCase(name, MAXTEXT_SOURCE, params, forward, (tokens[:, :-1],),
                   _lm_loss(forward, tokens), expected)


def maxtext_dense_shaped() -> ModelCase:
  """MaxText's default decoder (llama2 block), scanned with the layer axis
  at position 1 (``param_scan_axis=1``)."""
  return _maxtext("maxtext-dense-shaped", experts=0)


def maxtext_moe_shaped() -> ModelCase:
  """MaxText's Mixtral block: a routed MoE of 4 experts (top 2) whose
  stacks are ``(experts, layers, emb, mlp)``."""
  return _maxtext("maxtext-moe-shaped", experts=MAXTEXT_EXPERTS)


# --------------------------------------------- Haliax/Levanter-shaped ----

HALIAX_SOURCE = (
    "Haliax/Levanter-shaped Equinox modules: a NamedArray written from "
    "stanford-crfm/haliax (commit f41e7d40c63d) src/haliax/core.py "
    "(`register_pytree_node_class`, tree_flatten -> ((array,), axes): one "
    "child, so flattened paths end in '/0'; axes are Axis(name, size) aux "
    "data), src/haliax/nn/linear.py (Linear weight axes In+Out when "
    "out_first=False, `inputs.dot(weight, axis=In)`), nn/embedding.py "
    "(`weight.take(Vocab, ids)`, unembed `dot(x, weight, axis='embed')`), "
    "nn/normalization.py (LayerNorm weight, bias over the axis), nn/scan.py "
    "(Stacked: field `stacked`, haliax.vmap init adds the Block axis first, "
    "fold = scan); the GPT of stanford-crfm/levanter (commit 9263f81e8b45) "
    "src/levanter/models/gpt2.py (embeddings/token_embeddings, "
    "position_embeddings; transformer/blocks (Stacked over 'layers'), ln_f; "
    "attn/c_attn Embed -> (qkv, heads, head_size), unbind('qkv'); c_proj "
    "(heads, head_size) -> Embed; mlp/c_fc, c_proj; tied unembed)")


@dataclasses.dataclass(frozen=True)
class Axis:
  """A named axis, as ``haliax.Axis``."""

  name: str
  size: int


@jax.tree_util.register_pytree_node_class
class NamedArray:
  """An array with named axes, flattened as ``haliax.NamedArray``: the
  array is the one child (key path entry ``0``), the axes the aux data."""

  def __init__(self, array, axes):
    self.array = array
    self.axes = tuple(axes)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(a.name for a in self.axes)

  def tree_flatten(self):
    return (self.array,), self.axes

  @classmethod
  def tree_unflatten(cls, axes, children):
    return cls(children[0], axes)


def _named_dot(a: NamedArray, b: NamedArray, axis) -> NamedArray:
  """``haliax.dot``: contracts the named ``axis``; other shared names are
  batch axes (elementwise)."""
  axis = (axis,) if isinstance(axis, str) else tuple(axis)
  names = list(dict.fromkeys(a.names + b.names))
  letter = {n: chr(ord("a") + i) for i, n in enumerate(names)}
  out = [n for n in names if n not in axis]
  eqn = "{},{}->{}".format("".join(letter[n] for n in a.names),
                           "".join(letter[n] for n in b.names),
                           "".join(letter[n] for n in out))
  sizes = {ax.name: ax for ax in a.axes + b.axes}
  return NamedArray(jnp.einsum(eqn, a.array, b.array),
                    [sizes[n] for n in out])


def _named_normal(rng, axes, scale):
  return NamedArray(scale * rng.normal(size=[a.size for a in axes]), axes)


@functools.cache
def _haliax_modules():
  eqx = pytest.importorskip("equinox")

  def rearranged(x: NamedArray, names) -> NamedArray:
    perm = [x.names.index(n) for n in names]
    return NamedArray(jnp.transpose(x.array, perm), [x.axes[p] for p in perm])

  def add(x: NamedArray, bias: NamedArray) -> NamedArray:
    y = rearranged(x, [n for n in x.names if n not in bias.names]
                   + list(bias.names))
    return NamedArray(y.array + bias.array, y.axes)

  class Linear(eqx.Module):
    weight: NamedArray   # In + Out (out_first=False)
    bias: NamedArray     # Out
    In: tuple = eqx.field(static=True)

    def __call__(self, x):
      return add(_named_dot(x, self.weight, self.In), self.bias)

  class LayerNorm(eqx.Module):
    weight: NamedArray
    bias: NamedArray

    def __call__(self, x):
      x = rearranged(x, [n for n in x.names if n != "embed"] + ["embed"])
      mean = x.array.mean(-1, keepdims=True)
      y = (x.array - mean) * jax.lax.rsqrt(
          ((x.array - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
      return NamedArray(y * self.weight.array + self.bias.array, x.axes)

  class Embedding(eqx.Module):
    weight: NamedArray   # (vocab, embed)

    def take(self, ids, names):
      return NamedArray(self.weight.array[ids],
                        [Axis(n, s) for n, s in zip(names, ids.shape)]
                        + [self.weight.axes[1]])

  class Block(eqx.Module):
    ln_1: LayerNorm
    attn: Any      # {"c_attn": Linear, "c_proj": Linear}
    ln_2: LayerNorm
    mlp: Any       # {"c_fc": Linear, "c_proj": Linear}

    def __call__(self, x):
      qkv = self.attn["c_attn"](self.ln_1(x))
      qkv = rearranged(qkv, ("qkv", "batch", "heads", "position", "head_size"))
      q, k, v = (NamedArray(qkv.array[i], qkv.axes[1:]) for i in range(3))
      rename = lambda t: NamedArray(t.array, [
          Axis("key_position", a.size) if a.name == "position" else a
          for a in t.axes])
      k, v = rename(k), rename(v)
      scores = _named_dot(q, k, "head_size")  # batch heads position key_pos
      t = scores.array.shape[-1]
      causal = jnp.tril(jnp.ones((t, t), bool))
      probs = jax.nn.softmax(
          jnp.where(causal, scores.array / np.sqrt(q.axes[-1].size), -1e30),
          axis=-1)
      y = _named_dot(NamedArray(probs, scores.axes), v, "key_position")
      x = add(x, self.attn["c_proj"](y))
      h = self.mlp["c_fc"](self.ln_2(x))
      h = NamedArray(jax.nn.gelu(h.array), h.axes)
      return add(x, self.mlp["c_proj"](h))

  class Stacked(eqx.Module):
    stacked: Block   # every leaf with the Block axis first

    def fold(self, x):
      """``lax.scan`` over the Block axis: each step's slices become named
      arrays again without it."""
      is_named = lambda a: isinstance(a, NamedArray)
      named, treedef = jax.tree.flatten(self.stacked, is_leaf=is_named)
      axes = [a.axes[1:] for a in named]

      def body(x, arrays):
        block = jax.tree.unflatten(
            treedef, [NamedArray(arr, ax) for arr, ax in zip(arrays, axes)])
        return block(x), None

      return jax.lax.scan(body, x, [a.array for a in named])[0]

  class Transformer(eqx.Module):
    blocks: Stacked
    ln_f: LayerNorm

  class Embeddings(eqx.Module):
    token_embeddings: Embedding
    position_embeddings: Embedding

  class LMHeadModel(eqx.Module):
    transformer: Transformer
    embeddings: Embeddings

    def __call__(self, ids):
      e = self.embeddings
      x = e.token_embeddings.take(ids, ("batch", "position"))
      pos = e.position_embeddings.take(jnp.arange(ids.shape[1]),
                                       ("position",))
      x = add(x, pos)
      x = self.transformer.ln_f(self.transformer.blocks.fold(x))
      logits = _named_dot(x, e.token_embeddings.weight, "embed")
      return rearranged(logits, ("batch", "position", "vocab")).array

  return Linear, LayerNorm, Embedding, Block, Stacked, Transformer, \
      Embeddings, LMHeadModel


def haliax_gpt_shaped() -> ModelCase:
  """Levanter's GPT-2 on Haliax-style named arrays: blocks stacked over
  ``layers`` and folded with ``lax.scan``, the token embedding tied."""
  eqx = pytest.importorskip("equinox")
  (Linear, LayerNorm, Embedding, Block, Stacked, Transformer, Embeddings,
   LMHeadModel) = _haliax_modules()
  rng = np.random.default_rng(0)
  L, E = Axis("layers", 2), Axis("embed", 16)
  H, D = Axis("heads", 2), Axis("head_size", 8)
  M, Q = Axis("mlp", 32), Axis("qkv", 3)
  V, P = Axis("vocab", VOCAB), Axis("position", SEQ)
  ones = lambda axes: NamedArray(np.ones([a.size for a in axes]), axes)
  zeros = lambda axes: NamedArray(np.zeros([a.size for a in axes]), axes)

  def linear(In, Out):
    fan_in = int(np.prod([a.size for a in In]))
    return Linear(_named_normal(rng, (L, *In, *Out), fan_in ** -0.5),
                  zeros((L, *Out)), tuple(a.name for a in In))

  norm = lambda *lead: LayerNorm(ones((*lead, E)), zeros((*lead, E)))
  block = Block(norm(L), {"c_attn": linear((E,), (Q, H, D)),
                          "c_proj": linear((H, D), (E,))},
                norm(L), {"c_fc": linear((E,), (M,)),
                          "c_proj": linear((M,), (E,))})
  model = LMHeadModel(
      Transformer(Stacked(block), norm()),
      Embeddings(Embedding(_named_normal(rng, (V, E), 0.02)),
                 Embedding(_named_normal(rng, (P, E), 0.02))))
  model = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), model)
  params, static = eqx.partition(model, eqx.is_array)

  def forward(p, ids):
    return eqx.combine(p, static)(ids)

  tokens = _ints(VOCAB, (BATCH, SEQ + 1))
  b = "transformer/blocks/stacked"
  expected = {
      # Looked up by `take`; the token table also the tied unembedding.
      "embeddings/token_embeddings/weight/0": ADAMW,
      "embeddings/position_embeddings/weight/0": ADAMW,
      "transformer/ln_f/weight/0": ADAMW,
      "transformer/ln_f/bias/0": ADAMW,
      # Stacked LayerNorms (layers, embed), elementwise.
      f"{b}/ln_1/weight/0": ADAMW,
      f"{b}/ln_1/bias/0": ADAMW,
      f"{b}/ln_2/weight/0": ADAMW,
      f"{b}/ln_2/bias/0": ADAMW,
      # (layers, embed, qkv, heads, head_size): embed contracted; qkv
      # unbound after the product (three matrices: a batch axis), heads and
      # head_size free.
      f"{b}/attn/c_attn/weight/0": muon(1, (3, 4)),
      f"{b}/attn/c_attn/bias/0": ADAMW,
      # (layers, heads, head_size, embed): heads and head_size contracted.
      f"{b}/attn/c_proj/weight/0": muon((1, 2), 3),
      f"{b}/attn/c_proj/bias/0": ADAMW,
      f"{b}/mlp/c_fc/weight/0": muon(1, 2),      # (layers, embed, mlp)
      f"{b}/mlp/c_fc/bias/0": ADAMW,
      f"{b}/mlp/c_proj/weight/0": muon(1, 2),    # (layers, mlp, embed)
      f"{b}/mlp/c_proj/bias/0": ADAMW,
  }
  return ModelCase("haliax-gpt-shaped", HALIAX_SOURCE, params, forward,
                   (tokens[:, :-1],), _lm_loss(forward, tokens), expected)


# ------------------------------------------------------------ registry ----

CASES: dict[str, Callable[[], ModelCase]] = {
    "equinox-mlp": equinox_mlp,
    "equinox-transformer": equinox_transformer,
    "equinox-cnn": equinox_cnn,
    "equinox-scan": equinox_scan,
    "hf-gpt2": hf_gpt2,
    "hf-llama": hf_llama,
    "hf-llama-vocab-collision": hf_llama_vocab_collision,
    "hf-bert": hf_bert,
    "nnx-transformer": nnx_transformer,
    "nnx-scan": nnx_scan,
    "linen-scan": linen_scan,
    "sharded-train-gpt": sharded_train_gpt,
    "gemma3-shaped": gemma3_shaped,
    "gemma-qkv-shaped": gemma_qkv_shaped,
    "maxtext-dense-shaped": maxtext_dense_shaped,
    "maxtext-moe-shaped": maxtext_moe_shaped,
    "haliax-gpt-shaped": haliax_gpt_shaped,
}

#: The library each case needs beyond jax, optax and flax.
REQUIRES: dict[str, str] = {
    "equinox-mlp": "equinox",
    "equinox-transformer": "equinox",
    "equinox-cnn": "equinox",
    "equinox-scan": "equinox",
    "hf-gpt2": "transformers",
    "hf-llama": "transformers",
    "hf-llama-vocab-collision": "transformers",
    "hf-bert": "transformers",
    "nnx-transformer": "flax",
    "nnx-scan": "flax",
    "linen-scan": "flax",
    "sharded-train-gpt": "flax",
    "gemma3-shaped": "flax",
    "gemma-qkv-shaped": "flax",
    "maxtext-dense-shaped": "flax",
    "maxtext-moe-shaped": "flax",
    "haliax-gpt-shaped": "equinox",
}
