"""The three tasks of the comparison: ``image``, ``implicit``, ``lm``.

Each module provides ``make_task(data_dir=None, tiny=False, ...) -> Task``
(see :class:`examples.training.Task`), ``LEARNING_RATES`` and
``DEFAULT_STEPS``; ``lm`` and ``image`` also take ``preset``, ``batch_size``
and ``compute_dtype`` (``lm`` also ``seq_len``) and list their ``PRESETS``.
"""

TASKS = ("image", "implicit", "lm")


def get(name: str):
  """The task module ``examples.tasks.<name>``."""
  import importlib

  if name not in TASKS:
    raise ValueError(f"Unknown task {name!r}: choose from {', '.join(TASKS)}.")
  return importlib.import_module(f"examples.tasks.{name}")
