"""Image classification: a small CNN on MNIST-1D (or on CIFAR-10).

The seed study trained airbench's CIFAR-10 network; a CPU cannot, so the
default is MNIST-1D (Greydanus & Kobak, 2024, https://arxiv.org/abs/2011.14439),
which its paper sizes for exactly this: a CNN reaches about 94% test accuracy
there. With ``--data-dir`` pointing at an extracted ``cifar-10-batches-py``
the same code trains a 2-D version of the CNN on CIFAR-10 (with random
horizontal flips).

``--preset resnet`` (CIFAR-10 only, for a GPU) trains instead a ResNet-9-style
network (:class:`ResNet`: conv-BatchNorm-ReLU layers, max pooling and two
residual blocks, as in the fast CIFAR-10 training nets of Page's DAWNBench
entry and airbench) with random flips and 2-pixel random crops. Its BatchNorm
running statistics are ``nnx.BatchStat`` variables, not parameters, so the
optimizer (``nnx.Optimizer(..., wrt=nnx.Param)``) never sees them.

Every conv kernel goes through Muon (flattened to ``(k * C_in, C_out)``, or
``(k * k * C_in, C_out)`` in 2-D); the biases, BatchNorm scales and offsets
and the classifier (``head``) go to AdamW. Metric: test accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from examples.data import cifar10, mnist1d
from examples.training import Task

#: Default learning rates (see examples/README.md for the sweeps).
#: AdamW's from {1e-3, 3e-3, 1e-2, 3e-2}.
LEARNING_RATES = {"adamw": 1e-2, "muon": 0.02}
DEFAULT_STEPS = 1000
BATCH_SIZE = 128
#: ``--preset`` choices: ``cnn`` (the default: MNIST-1D or CIFAR-10) and
#: ``resnet`` (CIFAR-10 only).
PRESETS = ("cnn", "resnet")
DEFAULT_PRESET = "cnn"
#: The ResNet's widths: stem, then three stages (each halves the resolution);
#: stages 1 and 3 end in a residual block. ``--tiny`` uses ``RESNET_TINY``
#: (one width: fewer distinct shapes to compile on a CPU).
RESNET_WIDTHS = (64, 128, 256, 512)
RESNET_TINY = (8, 8, 8, 8)
RESNET_BATCH_SIZE = 512


class CNN(nnx.Module):
  """Conv blocks (``conv -> GELU``, some with stride 2) and a linear head.

  ``spatial_dims=1`` flattens the last feature map into the head (position
  matters in MNIST-1D); ``spatial_dims=2`` averages it over space.

  Args:
    in_channels: input channels.
    widths: output channels of each conv.
    strides: stride of each conv.
    num_classes: outputs of the head.
    spatial_dims: 1 or 2.
    length: input length (1-D only, to size the head).
    kernel_size: conv kernel size along every spatial axis.
    rngs: random keys.
  """

  def __init__(self, in_channels: int, widths: Sequence[int],
               strides: Sequence[int], num_classes: int, spatial_dims: int,
               *, length: int = 0, kernel_size: int = 3, dtype=None,
               rngs: nnx.Rngs):
    self.spatial_dims = spatial_dims
    chans = [in_channels, *widths]
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, kernel_size=(kernel_size,) * spatial_dims,
                 strides=(s,) * spatial_dims, padding="SAME", dtype=dtype,
                 rngs=rngs)
        for c_in, c_out, s in zip(chans[:-1], chans[1:], strides)])
    if spatial_dims == 1:
      for s in strides:
        length = -(-length // s)
      features = length * widths[-1]
    else:
      features = widths[-1]
    self.head = nnx.Linear(features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = jax.nn.gelu(conv(x))
    if self.spatial_dims == 1:
      x = x.reshape(x.shape[0], -1)
    else:
      x = x.mean(axis=(1, 2))
    return self.head(x).astype(jnp.float32)


class ConvBN(nnx.Module):
  """``3x3 conv (no bias) -> BatchNorm -> ReLU``, optionally followed by a
  2x2 max pool (after the conv, before the norm)."""

  def __init__(self, c_in: int, c_out: int, *, pool: bool = False,
               dtype=None, rngs: nnx.Rngs):
    self.pool = pool
    self.conv = nnx.Conv(c_in, c_out, kernel_size=(3, 3), padding="SAME",
                         use_bias=False, dtype=dtype, rngs=rngs)
    # Statistics and normalisation in float32 (promoted from bfloat16).
    self.norm = nnx.BatchNorm(c_out, momentum=0.9, epsilon=1e-5, dtype=dtype,
                              rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    if self.pool:
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    return jax.nn.relu(self.norm(x))


class Residual(nnx.Module):
  """``x + f(f(x))`` with two :class:`ConvBN` layers of the same width."""

  def __init__(self, width: int, *, dtype=None, rngs: nnx.Rngs):
    self.a = ConvBN(width, width, dtype=dtype, rngs=rngs)
    self.b = ConvBN(width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.b(self.a(x))


class ResNet(nnx.Module):
  """A ResNet-9-style CIFAR-10 network (He et al., "Deep Residual Learning
  for Image Recognition", CVPR 2016; the layout of Page's DAWNBench ResNet,
  https://myrtle.ai/learn/how-to-train-your-resnet/).

  ``stem (ConvBN w0) -> stage 1 (ConvBN w1 + pool, Residual w1) -> stage 2
  (ConvBN w2 + pool) -> stage 3 (ConvBN w3 + pool, Residual w3) -> global max
  pool -> Linear head``. Eight 3x3 convs and the head; 6.6M parameters at
  the default widths (64, 128, 256, 512). Call ``model.train()`` /
  ``model.eval()`` to switch BatchNorm between batch and running statistics.

  Args:
    in_channels: input channels.
    widths: the four widths ``(w0, w1, w2, w3)``.
    num_classes: outputs of the head.
    dtype: compute dtype (``None``: float32; ``jnp.bfloat16`` for mixed
      precision: float32 parameters, bfloat16 convolutions, float32 logits).
    rngs: random keys.
  """

  def __init__(self, in_channels: int, widths: Sequence[int],
               num_classes: int = 10, *, dtype=None, rngs: nnx.Rngs):
    if len(widths) != 4:
      raise ValueError(f"widths={tuple(widths)}: expected four widths.")
    w0, w1, w2, w3 = widths
    kw = dict(dtype=dtype, rngs=rngs)
    self.stem = ConvBN(in_channels, w0, **kw)
    self.layer1 = ConvBN(w0, w1, pool=True, **kw)
    self.res1 = Residual(w1, **kw)
    self.layer2 = ConvBN(w1, w2, pool=True, **kw)
    self.layer3 = ConvBN(w2, w3, pool=True, **kw)
    self.res3 = Residual(w3, **kw)
    self.head = nnx.Linear(w3, num_classes, use_bias=False, dtype=dtype,
                           rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.stem(x)
    x = self.res1(self.layer1(x))
    x = self.layer2(x)
    x = self.res3(self.layer3(x))
    return self.head(x.max(axis=(1, 2))).astype(jnp.float32)


def loss_fn(model: CNN, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Mean softmax cross-entropy."""
  x, y = batch
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int,
                  rng: np.random.Generator, flip: bool = False,
                  translate: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless shuffled mini-batches, a fresh permutation every epoch (the
  last partial batch of an epoch is dropped). ``flip``: mirror each image
  horizontally with probability 1/2. ``translate``: pad each image by that
  many pixels (reflecting) and crop it back at a random offset."""
  batch_size = min(batch_size, len(x))
  while True:
    order = rng.permutation(len(x))
    for i in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      xb = x[idx]
      if flip:
        mirror = rng.random(len(idx)) < 0.5
        xb = np.where(mirror[:, None, None, None], xb[:, :, ::-1], xb)
      if translate:
        xb = random_crop(xb, translate, rng)
      yield xb, y[idx]


def random_crop(x: np.ndarray, pad: int, rng: np.random.Generator
                ) -> np.ndarray:
  """Each ``(H, W, C)`` image of ``x`` reflect-padded by ``pad`` and cropped
  back to ``H x W`` at an offset drawn uniformly from ``[0, 2 pad]^2``."""
  n, h, w = x.shape[:3]
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                  mode="reflect")
  dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
  rows = dy[:, None] + np.arange(h)  # (n, h)
  cols = dx[:, None] + np.arange(w)  # (n, w)
  return padded[np.arange(n)[:, None, None], rows[:, :, None],
                cols[:, None, :]]


def _load(data_dir: str | None, tiny: bool):
  if data_dir is None:
    data = mnist1d.load(num_samples=500 if tiny else None)
    desc = "MNIST-1D (generated), 4,000 train / 1,000 test"
    spatial = 1
  else:
    data = cifar10.load(data_dir)
    mean = data["x_train"].mean(axis=(0, 1, 2)) / 255
    std = data["x_train"].std(axis=(0, 1, 2)) / 255
    for key in ("x_train", "x_test"):
      data[key] = ((data[key] / 255 - mean) / np.maximum(std, 1e-3)).astype(
          np.float32)
    desc = (f"CIFAR-10, {len(data['x_train']):,} train / "
            f"{len(data['x_test']):,} test")
    spatial = 2
  if tiny:
    data = {k: v[:256] for k, v in data.items()}
  return data, spatial, desc


def make_task(*, data_dir: str | None = None, tiny: bool = False,
              preset: str | None = None, batch_size: int | None = None,
              compute_dtype: str | None = None) -> Task:
  """The image-classification task.

  Args:
    data_dir: an extracted ``cifar-10-batches-py`` (or its parent); ``None``:
      MNIST-1D.
    tiny: 256 train and test examples and a narrower network (for tests).
    preset: ``"cnn"`` (default) or ``"resnet"`` (needs ``data_dir``).
    batch_size: images per step (default 128; 512 for ``resnet``).
    compute_dtype: ``None``/``"float32"`` or ``"bfloat16"`` (float32
      parameters and optimizer state, bfloat16 compute, float32 logits).
  """
  preset = preset or DEFAULT_PRESET
  if preset not in PRESETS:
    raise ValueError(f"Unknown image preset {preset!r}: choose from "
                     f"{', '.join(PRESETS)}.")
  if preset == "resnet" and data_dir is None:
    raise ValueError(
        "--preset resnet trains on CIFAR-10: pass --data-dir with an "
        "extracted cifar-10-batches-py folder.")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be at least 1.")
  if compute_dtype not in (None, "float32", "bfloat16"):
    raise ValueError(f"compute_dtype={compute_dtype!r}: expected float32 or "
                     "bfloat16.")
  dtype = jnp.bfloat16 if compute_dtype == "bfloat16" else None
  data, spatial, desc = _load(data_dir, tiny)
  x_test, y_test = data["x_test"], data["y_test"]
  in_channels = data["x_train"].shape[-1]
  if preset == "resnet":
    widths = RESNET_TINY if tiny else RESNET_WIDTHS

    def make_model(rngs: nnx.Rngs) -> nnx.Module:
      return ResNet(in_channels, widths, 10, dtype=dtype, rngs=rngs)

    model_desc = f"ResNet-9-style {'/'.join(map(str, widths))} (BatchNorm)"
    default_batch = RESNET_BATCH_SIZE
  else:
    if spatial == 1:
      widths, strides = ((8, 8) if tiny else (32, 64, 64)), (
          (2, 2) if tiny else (1, 2, 2))
      kwargs = dict(length=data["x_train"].shape[1], kernel_size=5)
    else:
      widths, strides = ((8, 8) if tiny else (32, 64, 128, 128)), (
          (2, 2) if tiny else (1, 2, 2, 2))
      kwargs = dict(kernel_size=3)

    def make_model(rngs: nnx.Rngs) -> nnx.Module:
      return CNN(in_channels, widths, strides, 10, spatial, dtype=dtype,
                 rngs=rngs, **kwargs)

    model_desc = (f"CNN {len(widths)} convs {'x'.join(map(str, widths))} "
                  f"({spatial}-D)")
    default_batch = BATCH_SIZE

  @nnx.jit
  def correct(model, x, y):
    return (model(x).argmax(-1) == y).sum()

  def evaluate(model: nnx.Module) -> float:
    model.eval()  # BatchNorm: running statistics
    hits = sum(int(correct(model, x_test[i:i + 1000], y_test[i:i + 1000]))
               for i in range(0, len(x_test), 1000))
    model.train()
    return hits / len(x_test)

  batch_size = batch_size or (32 if tiny else default_batch)
  translate = 2 if preset == "resnet" else 0
  dtype_name = compute_dtype or "float32"
  summary = (f"{model_desc}"
             + (f", {dtype_name} compute" if dtype is not None else "")
             + f", batch {batch_size}; {desc}"
             + (", flips and 2-px crops" if translate else "")
             + "; metric: test accuracy")
  return Task(
      name="image", summary=summary, make_model=make_model, loss=loss_fn,
      batches=lambda rng: epoch_batches(
          data["x_train"], data["y_train"], batch_size, rng,
          flip=spatial == 2, translate=translate),
      evaluate=evaluate, metric="test_accuracy", higher_is_better=True,
      learning_rates=LEARNING_RATES, default_steps=DEFAULT_STEPS,
      warmup=0.0, cooldown=0.3, items_per_step=batch_size,
      item_name="images",
      options={"preset": preset, "tiny": tiny, "batch_size": batch_size,
               "dtype": dtype_name, "param_dtype": "float32"})
