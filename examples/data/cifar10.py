"""CIFAR-10 from the ``cifar-10-batches-py`` pickles.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009
(https://www.cs.toronto.edu/~kriz/cifar.html). The Python version of the
dataset is a folder of six pickles, ``data_batch_1`` .. ``data_batch_5``
(50,000 training images) and ``test_batch`` (10,000), each a dict with
``b"data"``: a ``uint8`` array ``(N, 3072)`` holding each image as its red,
green and blue 32x32 planes in row-major order, and ``b"labels"``: ``N`` ints
in ``[0, 10)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from examples.data import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
EXPECTED = (f"an extracted {FOLDER} folder (data_batch_1..5 and test_batch "
            "pickles), or its parent")


def find(data_dir: str | Path) -> Path:
  """The ``cifar-10-batches-py`` folder at or directly under ``data_dir``."""
  data_dir = Path(data_dir)
  for folder in (data_dir, data_dir / FOLDER):
    if all((folder / name).is_file() for name in TRAIN_FILES + (TEST_FILE,)):
      return folder
  folder = data_dir / FOLDER if (data_dir / FOLDER).is_dir() else data_dir
  missing = [name for name in TRAIN_FILES + (TEST_FILE,)
             if not (folder / name).is_file()]
  raise DataError(
      f"--data-dir {str(data_dir)!r}: expected {EXPECTED}; "
      + (f"missing {', '.join(missing)} in {str(folder)!r}." if len(missing) < 6
         else "found none of them."))


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
  """One pickle as ``(images (N, 32, 32, 3) uint8, labels (N,) int32)``."""
  path = Path(path)
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int32)
  except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as e:
    raise DataError(
        f"{str(path)!r} is not a CIFAR-10 pickle (a dict with b'data' "
        f"(N, 3072) uint8 and b'labels'): {type(e).__name__}: {e}") from None
  if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(
      data):
    raise DataError(
        f"{str(path)!r}: expected b'data' of shape (N, 3072) and N labels, "
        f"got {data.shape} and {labels.shape}.")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def load(data_dir: str | Path) -> dict[str, np.ndarray]:
  """All of CIFAR-10 from ``data_dir``.

  Returns:
    ``{"x_train": (50000, 32, 32, 3) uint8, "y_train": (50000,) int32,
    "x_test": (10000, 32, 32, 3) uint8, "y_test": (10000,) int32}`` (fewer
    when the pickles hold fewer images).
  """
  folder = find(data_dir)
  train = [read_batch(folder / name) for name in TRAIN_FILES]
  x_test, y_test = read_batch(folder / TEST_FILE)
  return {
      "x_train": np.concatenate([x for x, _ in train]),
      "y_train": np.concatenate([y for _, y in train]),
      "x_test": x_test,
      "y_test": y_test,
  }
