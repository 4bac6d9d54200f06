"""Image classification: a small CNN on MNIST-1D (or on CIFAR-10).

The seed study trained airbench's CIFAR-10 network; a CPU cannot, so the
default is MNIST-1D (Greydanus & Kobak, 2024, https://arxiv.org/abs/2011.14439),
which its paper sizes for exactly this: a CNN reaches about 94% test accuracy
there. With ``--data-dir`` pointing at an extracted ``cifar-10-batches-py``
the same code trains a 2-D version of the CNN on CIFAR-10 (with random
horizontal flips).

Every conv kernel goes through Muon (flattened to ``(k * C_in, C_out)``, or
``(k * k * C_in, C_out)`` in 2-D); the biases and the classifier (``head``)
go to AdamW. Metric: test accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
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
               *, length: int = 0, kernel_size: int = 3, rngs: nnx.Rngs):
    self.spatial_dims = spatial_dims
    chans = [in_channels, *widths]
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, kernel_size=(kernel_size,) * spatial_dims,
                 strides=(s,) * spatial_dims, padding="SAME", rngs=rngs)
        for c_in, c_out, s in zip(chans[:-1], chans[1:], strides)])
    if spatial_dims == 1:
      for s in strides:
        length = -(-length // s)
      features = length * widths[-1]
    else:
      features = widths[-1]
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = jax.nn.gelu(conv(x))
    if self.spatial_dims == 1:
      x = x.reshape(x.shape[0], -1)
    else:
      x = x.mean(axis=(1, 2))
    return self.head(x)


def loss_fn(model: CNN, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Mean softmax cross-entropy."""
  x, y = batch
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int,
                  rng: np.random.Generator, flip: bool = False
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless shuffled mini-batches, a fresh permutation every epoch (the
  last partial batch of an epoch is dropped). ``flip``: mirror each image
  horizontally with probability 1/2."""
  batch_size = min(batch_size, len(x))
  while True:
    order = rng.permutation(len(x))
    for i in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      xb = x[idx]
      if flip:
        mirror = rng.random(len(idx)) < 0.5
        xb = np.where(mirror[:, None, None, None], xb[:, :, ::-1], xb)
      yield xb, y[idx]


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


def make_task(*, data_dir: str | None = None, tiny: bool = False) -> Task:
  """The image-classification task.

  Args:
    data_dir: an extracted ``cifar-10-batches-py`` (or its parent); ``None``:
      MNIST-1D.
    tiny: 256 train and test examples and a narrower CNN (for tests).
  """
  data, spatial, desc = _load(data_dir, tiny)
  x_test, y_test = data["x_test"], data["y_test"]
  in_channels = data["x_train"].shape[-1]
  if spatial == 1:
    widths, strides = ((8, 8) if tiny else (32, 64, 64)), (
        (2, 2) if tiny else (1, 2, 2))
    kwargs = dict(length=data["x_train"].shape[1], kernel_size=5)
  else:
    widths, strides = ((8, 8) if tiny else (32, 64, 128, 128)), (
        (2, 2) if tiny else (1, 2, 2, 2))
    kwargs = dict(kernel_size=3)

  def make_model(rngs: nnx.Rngs) -> CNN:
    return CNN(in_channels, widths, strides, 10, spatial, rngs=rngs, **kwargs)

  @nnx.jit
  def correct(model, x, y):
    return (model(x).argmax(-1) == y).sum()

  def evaluate(model: CNN) -> float:
    hits = sum(int(correct(model, x_test[i:i + 1000], y_test[i:i + 1000]))
               for i in range(0, len(x_test), 1000))
    return hits / len(x_test)

  batch_size = 32 if tiny else BATCH_SIZE
  summary = (f"CNN {len(widths)} convs {'x'.join(map(str, widths))} "
             f"({spatial}-D), batch {batch_size}; {desc}; metric: test "
             "accuracy")
  return Task(
      name="image", summary=summary, make_model=make_model, loss=loss_fn,
      batches=lambda rng: epoch_batches(
          data["x_train"], data["y_train"], batch_size, rng,
          flip=spatial == 2),
      evaluate=evaluate, metric="test_accuracy", higher_is_better=True,
      learning_rates=LEARNING_RATES, default_steps=DEFAULT_STEPS,
      warmup=0.0, cooldown=0.3)
