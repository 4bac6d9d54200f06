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

  The libraries' own initialisers would compile a program per layer (about
  2 s a model on 2 CPU cores), so the models are built with
  ``jax.eval_shape`` and filled here from NumPy: the tree, shapes and dtypes
  are the library's, the values a standard initialisation. Muon leaves are
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
  return _eqx_case("equinox-mlp", make, fwd, (x,),
                   lambda f: lambda p: jnp.mean((f(p, x) - y) ** 2), expected,
                   ones=())


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


def _hf_case(name, cls_name, config, expected, ones, source, loss_kind="lm",
             names_default=None):
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
                   loss, expected, dict(names_default or {}))


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
  names_default = {}
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
                  "FlaxLlamaAttention, FlaxLlamaForCausalLMModule)",
                  names_default=names_default)


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
}
