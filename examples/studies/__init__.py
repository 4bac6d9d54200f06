"""Studies: optimizers and diagnostics that are not part of the library.

A study module that adds an optimizer registers it with
:func:`examples.optimizers.register` when imported; :data:`STUDIES` lists
those modules and :func:`load` imports them, so ``compare.py`` (which calls
it before reading ``--optimizers``) runs their optimizers by name while the
registry itself imports no study.
"""

from __future__ import annotations

import importlib

#: The modules that register optimizers of their own when imported.
STUDIES: tuple[str, ...] = ("examples.studies.ogsign_spectral",)


def load() -> None:
  """Imports every module of :data:`STUDIES` (once; Python caches them), so
  their optimizers are in :data:`examples.optimizers.OPTIMIZERS`."""
  for module in STUDIES:
    importlib.import_module(module)
