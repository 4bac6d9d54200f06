"""Text that ships with Python: the pydoc topics in ``pydoc_data.topics``.

``pydoc_data.topics.topics`` maps about 80 help topics (``"assert"``,
``"class"``, ``"for"``, ...) to the reference text ``help()`` shows for them:
about 0.47 MB of English and Python code, no download needed.
"""

from __future__ import annotations

import numpy as np


def load_bytes() -> np.ndarray:
  """All topics, sorted by name and joined by blank lines, as UTF-8 bytes.

  Returns:
    A ``uint8`` array of byte values (a byte-level vocabulary of 256).
  """
  from pydoc_data import topics

  text = "\n\n".join(topics.topics[name] for name in sorted(topics.topics))
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def split(tokens: np.ndarray, val_fraction: float = 0.1
          ) -> tuple[np.ndarray, np.ndarray]:
  """The first ``1 - val_fraction`` of ``tokens`` for training, the rest for
  validation (one cut, so no validation window overlaps the training text)."""
  cut = int(round(len(tokens) * (1 - val_fraction)))
  return tokens[:cut], tokens[cut:]
