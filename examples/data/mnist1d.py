"""MNIST-1D, generated offline by the ``mnist1d`` package.

Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024
(https://arxiv.org/abs/2011.14439). 4,000 training and 1,000 test sequences of
length 40, ten classes. The package can also download a pickle; this reader
only uses its generator (``mnist1d.data.make_dataset``), which needs no
network.
"""

from __future__ import annotations

import random

import numpy as np


def load(seed: int = 42, num_samples: int | None = None
         ) -> dict[str, np.ndarray]:
  """Generates MNIST-1D with the package's default arguments.

  Args:
    seed: the generator's seed (the package's default, 42, gives the dataset
      of the paper).
    num_samples: train and test examples together (default: the package's,
      5,000); 80% of them train.

  Returns:
    ``{"x_train": (4000, 40, 1) float32, "y_train": (4000,) int32,
    "x_test": (1000, 40, 1) float32, "y_test": (1000,) int32}`` at the
    default size.
  """
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.seed = seed
  if num_samples is not None:
    args.num_samples = num_samples
  # make_dataset reseeds the global generators; put them back afterwards.
  saved_np, saved_py = np.random.get_state(), random.getstate()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(saved_np)
    random.setstate(saved_py)
  return {
      "x_train": data["x"].astype(np.float32)[..., None],
      "y_train": data["y"].astype(np.int32),
      "x_test": data["x_test"].astype(np.float32)[..., None],
      "y_test": data["y_test"].astype(np.int32),
  }
