"""Crash-safe training runs for the examples: orbax checkpoints and resume.

:class:`Checkpoints` wraps an ``orbax.checkpoint.CheckpointManager``: it
saves a run's whole state (the model's and the optimizer's arrays, any
sharding) every ``every`` steps and keeps the last ``keep`` checkpoints. Each
save is atomic: orbax writes into a temporary folder and renames it to the
step's number when complete, so a run killed during a save (SIGKILL,
preemption) leaves the previous checkpoint intact and no partial one that a
resume could pick up.

Next to the arrays each checkpoint holds a JSON record: the step, the
state of the NumPy generator that draws the batches (the data position
and the RNG), the run's history and the settings (``config``) it was
started with. A resume restores all of it, so that the resumed run is the
same run: on the CPU its losses are bit-identical to an uninterrupted one.

Resuming on another mesh (another number of devices, another layout) is the
same call: ``restore`` takes an abstract target -- shapes, dtypes and the
*new* shardings -- and orbax reads each array straight into its new layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax


def _normalise(value: Any) -> Any:
  """``value`` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


class Checkpoints:
  """A run's checkpoints in one folder.

  Args:
    directory: the folder (created if missing); one run per folder.
    every: save every this many steps (``maybe_save``).
    keep: keep the last this many checkpoints.
    config: the run's settings; a resume checks that they are the same.
    resume: continue from the latest checkpoint in ``directory`` if there is
      one. Without it a folder that already holds checkpoints is an error
      (so that a new run never mixes with an old one).
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int,
               config: Mapping[str, Any], resume: bool):
    import orbax.checkpoint as ocp

    if every < 1:
      raise ValueError(f"--checkpoint-every {every}: must be at least 1.")
    if keep < 1:
      raise ValueError(f"--checkpoint-keep {keep}: must be at least 1.")
    self._ocp = ocp
    self.directory = os.path.abspath(os.fspath(directory))
    self.every = every
    self.config = _normalise(dict(config))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True))
    latest = self.manager.latest_step()
    if latest is not None and not resume:
      self.manager.close()
      raise ValueError(
          f"--checkpoint-dir {self.directory} already holds checkpoints "
          f"(latest step {latest}): pass --resume to continue that run, or "
          "give an empty folder.")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, target) -> tuple[int, Any, dict] | None:
    """The latest checkpoint read into ``target``, or ``None`` if there is
    none.

    Args:
      target: the state's abstract target: a tree like the saved state of
        ``jax.ShapeDtypeStruct`` (or arrays) carrying the shardings to
        restore onto -- e.g. ``jax.tree.map(ocp.utils.to_shape_dtype_struct,
        state)`` of a freshly initialised state on the new mesh.

    Returns:
      ``(step, state, record)``: the step the checkpoint was taken after,
      the restored state and the JSON record saved with it.

    Raises:
      ValueError: the checkpoint was written by a run with other settings.
    """
    step = self.manager.latest_step()
    if step is None:
      return None
    args = self._ocp.args
    record = dict(self.manager.restore(step, args=args.Composite(
        record=args.JsonRestore()))["record"])
    saved = record.get("config", {})
    differ = sorted(k for k in set(saved) | set(self.config)
                    if saved.get(k) != self.config.get(k))
    if differ:
      detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, this run "
                         f"{self.config.get(k)!r}" for k in differ)
      raise ValueError(
          f"--resume: the checkpoint at step {step} in {self.directory} was "
          f"written by a run with other settings ({detail}). Resume with "
          "the same settings, or give another --checkpoint-dir.")
    target = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, target)
    restored = self.manager.restore(step, args=args.Composite(
        state=args.StandardRestore(target)))
    return step, restored["state"], record

  def save(self, step: int, state, record: Mapping[str, Any],
           force: bool = False) -> bool:
    """Saves ``state`` and ``record`` (plus the config) as checkpoint
    ``step`` if ``step`` is a multiple of ``every`` or ``force``; returns
    whether it saved. The write finishes in the background."""
    if not force and step % self.every:
      return False
    if step in (self.manager.all_steps() or ()):
      return False
    args = self._ocp.args
    record = {**_normalise(dict(record)), "config": self.config,
              "step": step}
    return self.manager.save(step, force=True, args=args.Composite(
        state=args.StandardSave(state), record=args.JsonSave(record)))

  def close(self) -> None:
    """Waits for the last save to be written and releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


def generator_state(rng) -> dict:
  """A NumPy ``Generator``'s state as JSON (its bit generator's state)."""
  return _normalise(rng.bit_generator.state)


def set_generator_state(rng, state: Mapping[str, Any]) -> None:
  rng.bit_generator.state = dict(state)
