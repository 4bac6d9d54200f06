"""Language modelling: a small GPT on bytes (or on FineWeb GPT-2 tokens).

The model is a decoder-only transformer in the GPT-2 mould (Radford et al.,
"Language Models are Unsupervised Multitask Learners", 2019): token and
learned position embeddings, pre-LayerNorm blocks of causal multi-head
self-attention and a GELU MLP, a final LayerNorm and an untied output head.
Muon takes the attention and MLP matrices; the embeddings and the head go to
AdamW by their names (``embed``, ``pos_embedding``, ``head``).

Data: by default the pydoc topics that ship with Python, as bytes (vocabulary
256), the last 10% held out for validation. With ``--data-dir`` holding
modded-nanogpt's FineWeb shards, GPT-2 tokens (vocabulary 50,257, padded to
50,304) instead. Metric: validation loss (nats per token).

Sizes come from :data:`PRESETS`: ``default`` (4 x 128, context 64, for a
2-core CPU), ``gpt2-small`` (12 x 768, 12 heads, context 1024) and
``gpt2-medium`` (24 x 1024, 16 heads, context 1024), the GPT-2 sizes of
Radford et al. With ``compute_dtype="bfloat16"`` the model computes in
bfloat16 (parameters, and so the optimizer state, stay float32; logits and
loss are float32): mixed precision as in Micikevicius et al., "Mixed
Precision Training", ICLR 2018 (https://arxiv.org/abs/1710.03740).

``GPT`` and ``GPTConfig`` are importable on their own, e.g. for data-parallel
training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from examples.data import fineweb, pydoc_text
from examples.training import Task

#: Default learning rates (see examples/README.md for the sweeps). AdamW's
#: from {5e-4, 1e-3, 2e-3}; OGSignMuon's from {0.005, 0.01, 0.02, 0.05}.
LEARNING_RATES = {"adamw": 1e-3, "muon": 0.02, "ogsignmuon": 0.01}
DEFAULT_STEPS = 300
BATCH_SIZE = 16
#: Validation windows evaluated (fewer when the validation text is shorter).
EVAL_WINDOWS = 128


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """The GPT's sizes.

  Attributes:
    vocab_size: number of token ids (256 for bytes).
    seq_len: context length (also the size of the position table).
    d_model: residual width.
    n_layers: number of transformer blocks.
    n_heads: attention heads (``d_model`` must be divisible by it).
    mlp_ratio: the MLP's hidden width over ``d_model``.
    compute_dtype: ``None`` (compute in the parameters' float32) or
      ``"bfloat16"``: parameters and activations are cast to bfloat16 inside
      the forward pass (matrix products accumulate in float32; LayerNorm
      statistics are float32), the logits are returned as float32.
  """

  vocab_size: int = 256
  seq_len: int = 64
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  mlp_ratio: int = 4
  compute_dtype: str | None = None

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by n_heads="
          f"{self.n_heads}.")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(
          f"compute_dtype={self.compute_dtype!r}: expected one of "
          f"{COMPUTE_DTYPES}.")

  @property
  def dtype(self):
    """The compute dtype for Flax modules (``None``: the inputs' and
    parameters' own)."""
    return None if self.compute_dtype is None else jnp.dtype(
        self.compute_dtype)


#: Accepted ``GPTConfig.compute_dtype`` values (``"float32"`` is the same as
#: ``None``: the parameters' dtype).
COMPUTE_DTYPES = (None, "float32", "bfloat16")

TINY = GPTConfig(seq_len=32, d_model=32, n_layers=2, n_heads=2)


@dataclasses.dataclass(frozen=True)
class Preset:
  """A model size and batch size for the ``lm`` task.

  Attributes:
    config: the GPT's sizes (``vocab_size`` is set from the data).
    batch_size: sequences per step.
    tiny: the same kind of model shrunk for tests (``--tiny``): two layers,
      the preset's head count, a head width of 4, context 32.
    tiny_batch_size: sequences per step with ``--tiny``.
  """

  config: GPTConfig
  batch_size: int
  tiny: GPTConfig
  tiny_batch_size: int = 8


def _shrunk(config: GPTConfig) -> GPTConfig:
  return dataclasses.replace(config, n_layers=2, d_model=4 * config.n_heads,
                             seq_len=32)


_GPT2_SMALL = GPTConfig(seq_len=1024, d_model=768, n_layers=12, n_heads=12)
_GPT2_MEDIUM = GPTConfig(seq_len=1024, d_model=1024, n_layers=24, n_heads=16)

#: ``--preset`` choices. ``default`` is the 2-core CPU demo (``make demo``);
#: the GPT-2 sizes are for a GPU (163M and 406M parameters with the FineWeb
#: vocabulary, the head untied from the embedding).
PRESETS = {
    "default": Preset(GPTConfig(), 16, TINY),
    "gpt2-small": Preset(_GPT2_SMALL, 32, _shrunk(_GPT2_SMALL)),
    "gpt2-medium": Preset(_GPT2_MEDIUM, 16, _shrunk(_GPT2_MEDIUM)),
}
DEFAULT_PRESET = "default"


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with separate q, k, v projections (so
  Muon orthogonalises each ``d x d`` matrix on its own)."""

  def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
    d, dtype = config.d_model, config.dtype
    self.n_heads = config.n_heads
    self.q = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.k = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.v = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, dtype=dtype,
                          kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.forward(x)[0]

  def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(output, max_logits)``: ``max_logits`` ``(heads,)`` is each head's
    largest causal pre-softmax logit ``q . k / sqrt(head_dim)`` over the
    batch (no gradient flows through it), what :func:`optax_muon.qk_clip`
    takes."""
    b, t, d = x.shape
    hd = d // self.n_heads
    heads = lambda y: y.reshape(b, t, self.n_heads, hd)
    q, k = heads(self.q(x)), heads(self.k(x))
    y = jax.nn.dot_product_attention(q, k, heads(self.v(x)), is_causal=True)
    qs, ks = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    logits = jnp.einsum("bthd,bshd->bhts", qs, ks,
                        preferred_element_type=jnp.float32) / np.sqrt(hd)
    causal = jnp.tril(jnp.ones((t, t), bool))
    max_logits = jnp.max(jnp.where(causal, logits, -jnp.inf), axis=(0, 2, 3))
    return self.out(y.reshape(b, t, d)), max_logits


class MLP(nnx.Module):
  """``Linear -> GELU -> Linear``, hidden width ``mlp_ratio * d_model``."""

  def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
    d, h = config.d_model, config.mlp_ratio * config.d_model
    self.fc = nnx.Linear(d, h, dtype=config.dtype, rngs=rngs)
    self.proj = nnx.Linear(h, d, kernel_init=nnx.initializers.zeros,
                           dtype=config.dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.proj(jax.nn.gelu(self.fc(x)))


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, ``x + mlp(ln(x))``."""

  def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(config.d_model, dtype=config.dtype, rngs=rngs)
    self.attn = CausalSelfAttention(config, rngs)
    self.ln2 = nnx.LayerNorm(config.d_model, dtype=config.dtype, rngs=rngs)
    self.mlp = MLP(config, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.forward(x)[0]

  def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(output, the attention's per-head max logits)``."""
    a, max_logits = self.attn.forward(self.ln1(x))
    x = x + a
    return x + self.mlp(self.ln2(x)), max_logits


class GPT(nnx.Module):
  """A small GPT: ``tokens (B, T) int -> logits (B, T, vocab_size)``.

  The output projections of attention and MLP start at zero, so every block
  starts as the identity (as in modded-nanogpt). The logits are float32
  whatever ``config.compute_dtype``.
  """

  def __init__(self, config: GPTConfig, rngs: nnx.Rngs):
    self.config = config
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(config.vocab_size, config.d_model,
                           embedding_init=init, dtype=config.dtype, rngs=rngs)
    self.pos_embedding = nnx.Param(
        init(rngs.params(), (config.seq_len, config.d_model)))
    self.blocks = nnx.List([Block(config, rngs)
                            for _ in range(config.n_layers)])
    self.ln_f = nnx.LayerNorm(config.d_model, dtype=config.dtype, rngs=rngs)
    self.head = nnx.Linear(config.d_model, config.vocab_size, use_bias=False,
                           kernel_init=init, dtype=config.dtype, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return self.forward(tokens)[0]

  def forward(self, tokens: jax.Array) -> tuple[jax.Array, dict]:
    """``(logits, max_logits)``, ``max_logits`` mapping each attention
    module's path (``"blocks/0/attn"``, ...) to its per-head largest
    pre-softmax logit, as :func:`optax_muon.qk_clip` takes it."""
    t = tokens.shape[-1]
    pos = self.pos_embedding[:t]
    if self.config.dtype is not None:
      pos = pos.astype(self.config.dtype)
    x = self.embed(tokens) + pos
    max_logits = {}
    for i, block in enumerate(self.blocks):
      x, max_logits[f"blocks/{i}/attn"] = block.forward(x)
    return self.head(self.ln_f(x)).astype(jnp.float32), max_logits


def loss_fn(model: GPT, batch: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of ``batch`` ``(B, T + 1)``."""
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch[:, 1:]).mean()


def loss_and_max_logits(model: GPT, batch: jax.Array
                        ) -> tuple[jax.Array, dict]:
  """:func:`loss_fn` and the step's per-head max attention logits (see
  :meth:`GPT.forward`)."""
  logits, max_logits = model.forward(batch[:, :-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch[:, 1:]).mean()
  return loss, max_logits


def random_windows(shards: Sequence[np.ndarray], length: int,
                   batch_size: int, rng: np.random.Generator
                   ) -> Iterator[np.ndarray]:
  """Endless ``(batch_size, length)`` int32 batches of random windows; a
  shard is picked in proportion to its length."""
  sizes = np.array([len(s) - length + 1 for s in shards])
  if (sizes < 1).all():
    raise ValueError(f"No shard holds a window of {length} tokens.")
  weights = np.maximum(sizes, 0) / np.maximum(sizes, 0).sum()
  while True:
    which = rng.choice(len(shards), size=batch_size, p=weights)
    batch = np.empty((batch_size, length), np.int32)
    for row, i in enumerate(which):
      start = rng.integers(sizes[i])
      batch[row] = shards[i][start:start + length]
    yield batch


def fixed_windows(tokens: np.ndarray, length: int, count: int) -> np.ndarray:
  """Up to ``count`` non-overlapping windows from the start of ``tokens``."""
  n = min(count, len(tokens) // length)
  if n < 1:
    raise ValueError(
        f"{len(tokens)} validation tokens hold no window of {length}.")
  return np.asarray(tokens[:n * length], np.int32).reshape(n, length)


def _load(data_dir: str | None, val_fraction: float = 0.1):
  """Train shards, validation tokens, vocabulary size and a description."""
  if data_dir is None:
    train, val = pydoc_text.split(pydoc_text.load_bytes(), val_fraction)
    return [train], val, 256, f"pydoc topics, {len(train) + len(val):,} bytes"
  train, val = fineweb.load(data_dir)
  if val:
    val_tokens = np.concatenate([np.asarray(v) for v in val])
  else:  # hold out the end of the last training shard
    last = train[-1]
    cut = int(len(last) * (1 - val_fraction))
    train, val_tokens = train[:-1] + [last[:cut]], np.asarray(last[cut:])
  total = sum(len(s) for s in train)
  return train, val_tokens, fineweb.VOCAB_SIZE, (
      f"FineWeb shards, {total:,} train / {len(val_tokens):,} val tokens")


def make_task(*, data_dir: str | None = None, tiny: bool = False,
              config: GPTConfig | None = None, preset: str | None = None,
              seq_len: int | None = None, batch_size: int | None = None,
              compute_dtype: str | None = None) -> Task:
  """The language-modelling task.

  Args:
    data_dir: a folder of FineWeb ``.bin`` shards; ``None``: pydoc bytes.
    tiny: the preset's tiny version (for tests): two layers, context 32.
    config: the model's sizes (overrides ``preset`` and ``tiny``);
      ``vocab_size`` is set from the data.
    preset: a name in :data:`PRESETS` (default ``"default"``).
    seq_len: context length, overriding the preset's.
    batch_size: sequences per step, overriding the preset's.
    compute_dtype: ``None``/``"float32"`` or ``"bfloat16"`` (mixed
      precision; see :class:`GPTConfig`).
  """
  preset = preset or DEFAULT_PRESET
  if preset not in PRESETS:
    raise ValueError(f"Unknown lm preset {preset!r}: choose from "
                     f"{', '.join(PRESETS)}.")
  for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
    if value is not None and value < 1:
      raise ValueError(f"{name}={value}: must be at least 1.")
  spec = PRESETS[preset]
  train, val_tokens, vocab_size, data_desc = _load(data_dir)
  config = config or (spec.tiny if tiny else spec.config)
  config = dataclasses.replace(
      config, vocab_size=vocab_size, seq_len=seq_len or config.seq_len,
      compute_dtype=(None if compute_dtype in (None, "float32")
                     else compute_dtype))
  batch_size = batch_size or (spec.tiny_batch_size if tiny
                              else spec.batch_size)
  length = config.seq_len + 1
  val = fixed_windows(val_tokens, length, 16 if tiny else EVAL_WINDOWS)

  @nnx.jit
  def val_loss_sum(model, batch):
    return loss_fn(model, batch) * batch.shape[0]

  def evaluate(model: GPT) -> float:
    # Batches of 64 windows (the remainder as one smaller batch).
    total = sum(float(val_loss_sum(model, val[i:i + 64]))
                for i in range(0, len(val), 64))
    return total / len(val)

  dtype = config.compute_dtype or "float32"
  summary = (f"GPT {config.n_layers}x{config.d_model} (heads {config.n_heads},"
             f" context {config.seq_len}, vocab {config.vocab_size}"
             + (f", {dtype} compute" if config.compute_dtype else "")
             + f"), batch {batch_size}; {data_desc}; metric: validation loss "
             f"on {len(val)} windows")
  return Task(
      name="lm", summary=summary, make_model=lambda rngs: GPT(config, rngs),
      loss=loss_fn,
      batches=lambda rng: random_windows(train, length, batch_size, rng),
      evaluate=evaluate, metric="val_loss", higher_is_better=False,
      learning_rates=LEARNING_RATES, default_steps=DEFAULT_STEPS,
      warmup=0.05, cooldown=0.3, items_per_step=batch_size * config.seq_len,
      item_name="tokens", max_logits_loss=loss_and_max_logits,
      qk_names=(("q",), ("k",)),
      options={"preset": preset, "tiny": tiny, "n_layers": config.n_layers,
               "d_model": config.d_model, "n_heads": config.n_heads,
               "seq_len": config.seq_len, "vocab_size": config.vocab_size,
               "batch_size": batch_size, "dtype": dtype,
               "param_dtype": "float32"})
