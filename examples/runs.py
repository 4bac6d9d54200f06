"""The runs of a ``compare.py`` call: one training per optimizer (or per
optimizer and learning rate, for a sweep) on one task.

* :func:`make_task`: the task, with the command line's model and data
  settings;
* :func:`plan_jobs`: the runs (:class:`Job`), a learning-rate grid per
  optimizer for a sweep (:func:`sweep_grid`);
* :func:`checkpoints_for`: a run's checkpoints (``--checkpoint-dir``);
* :func:`run_jobs`: trains them in turn with :func:`examples.training.train`,
  printing one line per run.

Nothing here exits the process: what the command line must report as its
own error (data it cannot read, a checkpoint folder of another run, a
resume that does not match) is raised as :class:`SetupError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from flax import nnx

import optax_muon as om
from examples import optimizers, tasks, training
from examples.checkpoints import Checkpoints
from examples.data import DataError

#: The learning rates of a sweep when neither ``--lr-grid`` nor the task's
#: ``LR_GRID`` gives them: 1e-4 to 1 in half-decades.
DEFAULT_LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class SetupError(Exception):
  """A run that cannot start as asked; the message says why and what to do
  (``compare.py`` prints it as ``compare.py: error: MESSAGE``)."""


class Job(NamedTuple):
  """One run: optimizer ``name`` (a registry name, maybe with a ``~TAG``) at
  ``learning_rate`` with keyword arguments ``options``."""

  name: str
  learning_rate: float
  options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every run of one call shares (``compare.py``'s flags of the same
  names)."""

  steps: int
  seed: int = 0
  num_evals: int = 10
  progress: bool | None = None
  qk_clip: float | None = None
  data_dir: str | None = None
  lr_sweep: bool = False
  checkpoint_dir: str | None = None
  checkpoint_every: int = 100
  checkpoint_keep: int = 2
  resume: bool = False


def make_task(name: str, *, data_dir: str | None = None, tiny: bool = False,
              preset: str | None = None, seq_len: int | None = None,
              batch_size: int | None = None, dtype: str = "float32",
              warmup: float | None = None, cooldown: float | None = None
              ) -> training.Task:
  """Task ``name`` (:data:`examples.tasks.TASKS`) with the given model and
  data settings; ``None`` keeps the task's (or its preset's) own.

  Raises:
    SetupError: a ``data_dir`` the task cannot read, or settings it does not
      take (e.g. a preset that needs a ``data_dir``).
  """
  kwargs = {}
  if preset is not None:
    kwargs["preset"] = preset
  if seq_len is not None:
    kwargs["seq_len"] = seq_len
  if batch_size is not None:
    kwargs["batch_size"] = batch_size
  if dtype != "float32":
    kwargs["compute_dtype"] = dtype
  try:
    task = tasks.get(name).make_task(data_dir=data_dir, tiny=tiny, **kwargs)
  except (DataError, ValueError, FileNotFoundError, NotADirectoryError) as e:
    # DataError: a data_dir the task cannot read; ValueError: e.g. a preset
    # that needs a data_dir.
    raise SetupError(str(e)) from None
  return dataclasses.replace(
      task,
      warmup=task.warmup if warmup is None else warmup,
      cooldown=task.cooldown if cooldown is None else cooldown)


def sweep_grid(task_name: str, lr_grid: Sequence[float] | None = None
               ) -> tuple[float, ...]:
  """The learning rates of a sweep: ``lr_grid`` if given, else the task
  module's ``LR_GRID``, else :data:`DEFAULT_LR_GRID`."""
  return tuple(lr_grid or getattr(tasks.get(task_name), "LR_GRID", None)
               or DEFAULT_LR_GRID)


def plan_jobs(plan: Mapping[str, tuple[float | None, dict[str, Any]]],
              task: training.Task, sweep: Sequence[float] | None = None
              ) -> list[Job]:
  """The runs, in ``plan``'s order.

  Args:
    plan: ``{name: (learning rate or None, options)}`` (``compare.py``'s
      ``parse_args``); ``None`` takes the optimizer's default on ``task``
      (:func:`examples.optimizers.default_lr`).
    task: the task.
    sweep: with a learning-rate sweep, its grid: one run per optimizer and
      learning rate (the plan's learning rates are then not used).
  """
  jobs = []
  for name, (lr, options) in plan.items():
    if sweep is not None:
      jobs += [Job(name, g, options) for g in sweep]
    else:
      jobs.append(Job(name, lr or optimizers.default_lr(
          name, task.learning_rates, options), options))
  return jobs


def checkpoints_for(settings: Settings, task: training.Task, job: Job
                    ) -> Checkpoints | None:
  """The checkpoints of one run (``checkpoint_dir``/NAME, with the learning
  rate in a sweep), or ``None`` without a ``checkpoint_dir``. What must
  match for a resume to continue the same run goes into its config.

  Raises:
    SetupError: the folder holds another run's checkpoints.
  """
  if settings.checkpoint_dir is None:
    return None
  name, lr, options = job
  folder = name if not settings.lr_sweep else f"{name}@lr={lr:g}"
  try:
    return Checkpoints(
        Path(settings.checkpoint_dir) / folder.replace(os.sep, "_"),
        every=settings.checkpoint_every, keep=settings.checkpoint_keep,
        resume=settings.resume, config={
            "task": task.name, "task_options": {
                k: training._jsonable(v) for k, v in task.options.items()},
            "optimizer": name, "learning_rate": lr,
            "options": {k: training._jsonable(v) for k, v in options.items()},
            "steps": settings.steps, "seed": settings.seed,
            "warmup": task.warmup, "cooldown": task.cooldown,
            "qk_clip": settings.qk_clip, "data_dir": settings.data_dir})
  except ValueError as e:  # a folder of another run
    raise SetupError(str(e)) from None


def routing(task: training.Task, seed: int = 0) -> str:
  """How the optimizers route every leaf of the task's model
  (:func:`optax_muon.describe` of its shapes; nothing is computed)."""
  return om.describe(nnx.state(nnx.eval_shape(
      lambda: task.make_model(nnx.Rngs(seed))), nnx.Param), group_layers=True)


def run_jobs(task: training.Task, jobs: Sequence[Job], settings: Settings
             ) -> list[training.RunResult]:
  """Trains ``jobs`` in turn from the same initial weights and batches
  (``settings.seed``), printing one line per run.

  A Muon-family optimizer's AdamW part gets the task's AdamW learning rate
  (:func:`examples.optimizers.build`).

  Raises:
    SetupError: a run's checkpoints do not match it (see
      :func:`checkpoints_for`, and ``--resume`` in
      :func:`examples.training.train`).
  """
  adamw_lr = task.learning_rates["adamw"]
  results = []
  for job in jobs:
    name, lr, options = job
    tx = optimizers.build(name, lr, options, adamw_learning_rate=adamw_lr)
    checkpoints = checkpoints_for(settings, task, job)
    try:
      result = training.train(
          task, tx, steps=settings.steps, seed=settings.seed, name=name,
          learning_rate=lr, options=options, num_evals=settings.num_evals,
          progress=settings.progress, qk_clip=settings.qk_clip,
          checkpoints=checkpoints)
    except ValueError as e:
      if not str(e).startswith("--resume"):
        raise
      raise SetupError(str(e)) from None
    if result.resumed_from is not None:
      print(f"  {name}: resumed from step {result.resumed_from}")
    results.append(result)
    rate = (f", {result.items_per_second:,.0f} {task.item_name}/s"
            if math.isfinite(result.items_per_second) else "")
    logit = ""
    if result.max_logit_history:
      top = max(v for _, v in result.max_logit_history)
      logit = f", max attention logit {top:.1f}"
    print(f"  {name} lr={lr:.3g}: final train loss "
          f"{result.final_train_loss:.4f}, {task.metric} "
          f"{result.eval_metric:.4f} ({result.seconds:.1f} s{rate}{logit})",
          flush=True)
  return results
