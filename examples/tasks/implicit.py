"""Neural implicit: a coordinate MLP with Fourier features fits a 2-D image.

The seed study optimised 2-D neural implicits (with score distillation, which
needs a diffusion model and a GPU). Here the same kind of network fits an
image directly: pixel coordinates ``(x, y)`` in ``[0, 1)^2`` go through random
Fourier features (Tancik et al., "Fourier Features Let Networks Learn High
Frequency Functions in Low Dimensional Domains", NeurIPS 2020,
https://arxiv.org/abs/2006.10739), ``[sin(2 pi B x), cos(2 pi B x)]`` with a
fixed Gaussian ``B`` of scale ``sigma``, then a ReLU MLP predicts RGB. Every
step uses every pixel (full batch). The image is scikit-image's
``astronaut()``, centre-cropped and downsampled to 64x64.

Muon takes the MLP's hidden matrices (the first one included); the biases and
the RGB output layer (``head``) go to AdamW. Metric: PSNR (dB) of the fit,
``10 log10(1 / MSE)`` on ``[0, 1]`` pixel values.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from examples.data import DataError, images
from examples.training import Task

#: Default learning rates (see examples/README.md for the sweeps).
#: AdamW's from the --lr-sweep grid.
LEARNING_RATES = {"adamw": 1e-2, "muon": 0.02}
DEFAULT_STEPS = 500
IMAGE = "astronaut"
SIZE = 64
#: Fourier features, hidden width, hidden layers, frequency scale sigma.
NUM_FEATURES, WIDTH, DEPTH, SIGMA = 64, 64, 3, 10.0
#: Learning rates of ``--lr-sweep`` (half-decades).
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class FourierBasis(nnx.Variable):
  """The fixed frequency matrix ``B``; not a ``Param``, so not trained."""


class CoordinateMLP(nnx.Module):
  """``coords (N, 2) -> RGB (N, 3)``: Fourier features, ReLU MLP, sigmoid.

  Args:
    num_features: rows of ``B`` (the MLP sees twice as many inputs).
    sigma: standard deviation of ``B``'s entries (cycles per unit length).
    width: hidden width.
    depth: number of hidden layers.
    rngs: random keys.
  """

  def __init__(self, num_features: int, sigma: float, width: int, depth: int,
               rngs: nnx.Rngs):
    self.basis = FourierBasis(
        sigma * jax.random.normal(rngs.params(), (2, num_features)))
    sizes = [2 * num_features] + [width] * depth
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(width, 3, rngs=rngs)

  def __call__(self, coords: jax.Array) -> jax.Array:
    angles = 2 * jnp.pi * coords @ self.basis[...]
    x = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return jax.nn.sigmoid(self.head(x))


def loss_fn(model: CoordinateMLP, batch: tuple[jax.Array, jax.Array]
            ) -> jax.Array:
  """Mean squared error over pixels and channels."""
  coords, rgb = batch
  return jnp.mean((model(coords) - rgb) ** 2)


def psnr(mse: float) -> float:
  """Peak signal-to-noise ratio (dB) of pixel values in ``[0, 1]``."""
  return float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf")


def pixel_grid(size: int) -> np.ndarray:
  """``(size * size, 2)`` coordinates ``(row, col) / size`` in ``[0, 1)``."""
  axis = np.arange(size, dtype=np.float32) / size
  return np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


def make_task(*, data_dir: str | None = None, tiny: bool = False) -> Task:
  """The neural-implicit task.

  Args:
    data_dir: not used; the image comes from scikit-image.
    tiny: a 16x16 image and a small MLP (for tests).
  """
  if data_dir is not None:
    raise DataError(
        f"--data-dir {data_dir!r}: the implicit task takes no data directory "
        f"(it fits skimage.data.{IMAGE}()); drop --data-dir.")
  size = 16 if tiny else SIZE
  image = images.load(IMAGE, size)
  coords, rgb = pixel_grid(size), image.reshape(-1, 3)
  num_features, width, depth, sigma = (16, 32, 2, 4.0) if tiny else (
      NUM_FEATURES, WIDTH, DEPTH, SIGMA)

  def batches(rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
    del rng  # full batch: every step sees every pixel
    while True:
      yield coords, rgb

  @nnx.jit
  def mse(model):
    return loss_fn(model, (coords, rgb))

  summary = (f"coordinate MLP {depth}x{width}, {num_features} Fourier "
             f"features (sigma {sigma}); skimage {IMAGE} {size}x{size}, full "
             "batch; metric: PSNR of the fit")
  return Task(
      name="implicit", summary=summary,
      make_model=lambda rngs: CoordinateMLP(num_features, sigma, width, depth,
                                            rngs),
      loss=loss_fn, batches=batches,
      evaluate=lambda model: psnr(float(mse(model))),
      metric="psnr", higher_is_better=True,
      learning_rates=LEARNING_RATES, default_steps=DEFAULT_STEPS,
      warmup=0.0, cooldown=0.3)
