"""An image that scikit-image ships, downsampled for a CPU."""

from __future__ import annotations

import numpy as np

from examples.data import DataError


def load(name: str = "astronaut", size: int = 64) -> np.ndarray:
  """``skimage.data.<name>()`` as a ``(size, size, 3)`` float32 image in [0, 1].

  The image is cropped to a centred square and downsampled with area
  averaging (``skimage.transform.resize(..., anti_aliasing=True)``); a grey
  image is repeated over three channels.
  """
  import skimage.data
  import skimage.transform

  loader = getattr(skimage.data, name, None)
  if not callable(loader):
    raise DataError(f"skimage.data has no image {name!r}.")
  image = np.asarray(loader())
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  image = image[..., :3].astype(np.float32)
  if image.max() > 1:
    image = image / 255.0
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top:top + side, left:left + side]
  image = skimage.transform.resize(
      image, (size, size), anti_aliasing=True, preserve_range=True)
  return np.clip(image, 0.0, 1.0).astype(np.float32)
