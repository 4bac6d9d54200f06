"""One training loop for every task.

A task (:class:`Task`) supplies a model factory, a loss, an endless stream of
training batches and an evaluation metric; :func:`train` does the rest with a
single jitted step (``nnx.jit``) around ``nnx.value_and_grad`` and
``nnx.Optimizer(model, tx, wrt=nnx.Param)``. The same code trains the CNN, the
coordinate MLP and the GPT, under AdamW and every Muon-family optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_muon as om
from examples.checkpoints import Checkpoints, generator_state

#: The training loss reported as ``final_train_loss``: the mean over this many
#: last steps (mini-batch losses are noisy; a full-batch task is smooth anyway).
FINAL_LOSS_WINDOW = 10


@dataclasses.dataclass(frozen=True)
class Task:
  """What :func:`train` needs from a task.

  Attributes:
    name: ``"image"``, ``"implicit"`` or ``"lm"``.
    summary: one line naming the data and the model.
    make_model: ``make_model(rngs) -> nnx.Module``; the same seed gives the
      same initial weights for every optimizer.
    loss: ``loss(model, batch) -> scalar``, traced under ``jit``.
    batches: ``batches(rng) -> iterator`` of training batches (pytrees of
      NumPy arrays); the same generator seed gives the same batches.
    evaluate: ``evaluate(model) -> float``, the task's metric.
    metric: the metric's name, e.g. ``"test_accuracy"``.
    higher_is_better: whether a larger metric is better.
    learning_rates: default learning rate per optimizer name, with at least
      ``"adamw"`` and ``"muon"`` (see ``examples.optimizers.default_lr``).
    default_steps: the steps ``compare.py`` runs when ``--steps`` is not given.
    warmup: fraction of the steps with a linear learning-rate warmup.
    cooldown: fraction of the steps, at the end, with a linear decay to zero.
    items_per_step: what one step trains on, counted in ``item_name`` (e.g.
      batch size x context for a language model), for the throughput; 0: not
      reported.
    item_name: ``"tokens"``, ``"images"``, ...
    options: the model and data settings the task was built with (preset,
      batch size, compute dtype, ...), recorded in ``results.json``.
    max_logits_loss: for attention models, ``(model, batch) -> (loss,
      max_logits)`` with ``max_logits`` as :func:`optax_muon.qk_clip` takes
      it (attention module path -> per-head largest pre-softmax logit); the
      run then records the largest logit of every step and can QK-clip.
    qk_names: ``(query_names, key_names)`` of the attention projections,
      for :func:`optax_muon.qk_clip`.
  """

  name: str
  summary: str
  make_model: Callable[[nnx.Rngs], nnx.Module]
  loss: Callable[[nnx.Module, Any], jax.Array]
  batches: Callable[[np.random.Generator], Iterator[Any]]
  evaluate: Callable[[nnx.Module], float]
  metric: str
  higher_is_better: bool
  learning_rates: Mapping[str, float]
  default_steps: int
  warmup: float = 0.0
  cooldown: float = 0.0
  items_per_step: int = 0
  item_name: str = "examples"
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  max_logits_loss: Callable[[nnx.Module, Any], tuple[jax.Array, Any]] | None = (
      None)
  qk_names: tuple[tuple[str, ...], tuple[str, ...]] | None = None


@dataclasses.dataclass
class RunResult:
  """One optimizer's run; ``to_json`` gives the ``results.json`` entry."""

  optimizer: str
  learning_rate: float
  options: dict[str, Any]
  history: list[tuple[int, float]]
  eval_history: list[tuple[int, float]]
  metric: str
  seconds: float
  step_ms: float
  cpu_seconds: float = math.nan
  items_per_second: float = math.nan
  item_name: str = "examples"
  steps_to_target: int | None = None
  # (step, largest pre-softmax attention logit of the step), attention tasks
  max_logit_history: list[tuple[int, float]] = dataclasses.field(
      default_factory=list)
  qk_clip: float | None = None
  # the step the run was last resumed from (a checkpoint), if it was
  resumed_from: int | None = None

  @property
  def final_train_loss(self) -> float:
    losses = [loss for _, loss in self.history[-FINAL_LOSS_WINDOW:]]
    return float(np.mean(losses)) if losses else math.nan

  @property
  def eval_metric(self) -> float:
    return self.eval_history[-1][1] if self.eval_history else math.nan

  def to_json(self) -> dict[str, Any]:
    return {
        "optimizer": self.optimizer,
        "learning_rate": self.learning_rate,
        "final_train_loss": _finite_or_none(self.final_train_loss),
        "eval_metric": {"name": self.metric,
                        "value": _finite_or_none(self.eval_metric)},
        "seconds": round(self.seconds, 3),
        "history": [[s, _finite_or_none(v)] for s, v in self.history],
        # Beyond the required schema:
        "eval_history": [[s, _finite_or_none(v)] for s, v in self.eval_history],
        "step_ms": _finite_or_none(round(self.step_ms, 3)),
        "cpu_seconds": round(self.cpu_seconds, 3),
        "options": {k: _jsonable(v) for k, v in self.options.items()},
        f"{self.item_name}_per_second": _finite_or_none(
            self.items_per_second),
        "steps_to_target": self.steps_to_target,
        **({"max_logit_history": [[s, _finite_or_none(v)]
                                  for s, v in self.max_logit_history],
            "max_logit": _finite_or_none(max(
                (v for _, v in self.max_logit_history), default=math.nan)),
            "qk_clip": self.qk_clip} if self.max_logit_history else {}),
        **({"resumed_from": self.resumed_from}
           if self.resumed_from is not None else {}),
    }


def trailing_mean(losses: list[float], window: int = FINAL_LOSS_WINDOW
                  ) -> list[float]:
  """The mean of each step's loss and the ``window - 1`` before it (fewer at
  the start): the smoothed loss of :func:`steps_to_target`. Its last value is
  ``final_train_loss``."""
  return [float(np.mean(losses[max(0, i + 1 - window):i + 1]))
          for i in range(len(losses))]


def steps_to_target(history: list[tuple[int, float]], target: float
                    ) -> int | None:
  """The first step whose :func:`trailing_mean` loss is at most ``target``;
  ``None`` if none is (or the target is not finite).

  A run's own ``final_train_loss`` is such a target for it, reached at the
  last step at the latest.
  """
  if target is None or not math.isfinite(target):
    return None
  smoothed = trailing_mean([v for _, v in history])
  for (step, _), value in zip(history, smoothed):
    if value <= target:  # False for NaN
      return int(step)
  return None


def _finite_or_none(x: float) -> float | None:
  """JSON has no NaN or infinity: a diverged run's numbers become ``null``.
  Finite numbers keep 7 significant digits (float32 precision)."""
  x = float(x)
  return float(f"{x:.7g}") if math.isfinite(x) else None


def _jsonable(x: Any) -> Any:
  if isinstance(x, (bool, int, float, str)) or x is None:
    return x
  if isinstance(x, (tuple, list)):
    return [_jsonable(v) for v in x]
  return repr(x)


def lr_multiplier(steps: int, warmup: float, cooldown: float
                  ) -> optax.Schedule:
  """A trapezoid in ``[0, 1]``: linear warmup over ``warmup * steps`` steps,
  flat, then a linear decay to zero over the last ``cooldown * steps``.

  Applied to every optimizer alike (``optax.scale_by_schedule`` after the
  optimizer), so it scales the Muon and the AdamW parts of a Muon-family
  optimizer together.
  """
  n_warm = int(round(warmup * steps))
  n_cool = int(round(cooldown * steps))

  def schedule(count):
    t = count.astype(jnp.float32) + 1.0  # the step being taken, from 1
    up = jnp.minimum(1.0, t / max(n_warm, 1)) if n_warm else 1.0
    down = jnp.clip((steps - t + 1.0) / max(n_cool, 1), 0.0, 1.0) if (
        n_cool) else 1.0
    return jnp.minimum(up, down)

  return schedule


def with_schedule(tx: optax.GradientTransformation, steps: int, warmup: float,
                  cooldown: float) -> optax.GradientTransformation:
  """``tx`` followed by the :func:`lr_multiplier` of the run (identity when
  there is neither warmup nor cooldown)."""
  if not warmup and not cooldown:
    return tx
  return optax.chain(
      tx, optax.scale_by_schedule(lr_multiplier(steps, warmup, cooldown)))


def make_train_step(loss: Callable[[nnx.Module, Any], jax.Array]):
  """The jitted step: ``step(model, optimizer, batch) -> loss`` updates the
  model and the optimizer state in place."""

  @nnx.jit
  def train_step(model, optimizer, batch):
    value, grads = nnx.value_and_grad(loss)(model, batch)
    optimizer.update(model, grads)
    return value

  return train_step


def make_max_logits_train_step(
    loss: Callable[[nnx.Module, Any], tuple[jax.Array, Any]], clip: bool):
  """The jitted step of an attention task: ``step(model, optimizer, batch)
  -> (loss, largest logit)``; with ``clip`` the optimizer (chained with
  :func:`optax_muon.qk_clip`) gets the step's ``max_logits``."""

  @nnx.jit
  def train_step(model, optimizer, batch):
    (value, max_logits), grads = nnx.value_and_grad(loss, has_aux=True)(
        model, batch)
    if clip:
      optimizer.update(model, grads, max_logits=max_logits)
    else:
      optimizer.update(model, grads)
    top = functools.reduce(jnp.maximum,
                           [jnp.max(m) for m in max_logits.values()])
    return value, top

  return train_step


def eval_steps(steps: int, num_evals: int) -> list[int]:
  """``num_evals`` evenly spaced steps ending at ``steps`` (the final one
  always included)."""
  num_evals = max(1, min(num_evals, steps))
  return sorted({int(round(steps * (i + 1) / num_evals))
                 for i in range(num_evals)})


def train(task: Task, tx: optax.GradientTransformation, *, steps: int,
          seed: int, name: str, learning_rate: float,
          options: Mapping[str, Any] | None = None, num_evals: int = 10,
          progress: bool | None = None,
          qk_clip: float | None = None,
          checkpoints: Checkpoints | None = None) -> RunResult:
  """Trains a fresh model from ``task`` with ``tx`` for ``steps`` steps.

  Args:
    task: the task.
    tx: the optimizer (the run's schedule is added here).
    steps: number of optimizer steps.
    seed: seeds the model's initial weights and the order of the batches, so
      two optimizers with the same seed see the same data from the same start.
    name: the optimizer's name, for the progress bar and the result.
    learning_rate: recorded in the result.
    options: the optimizer's keyword arguments, recorded in the result.
    num_evals: how many times to evaluate the metric (the last after the final
      step).
    progress: show a tqdm bar; ``None`` shows it only on a terminal.
    qk_clip: chain :func:`optax_muon.qk_clip` with this ``tau`` after the
      optimizer and its schedule (attention tasks only).
    checkpoints: save the run's state every ``checkpoints.every`` steps and
      after the last; if the folder holds a checkpoint of this run (a
      resume), continue from it: the model and optimizer state, the data
      position (the batches before it are drawn again and dropped, and the
      generator's state is checked against the one saved) and the history,
      so that the run is the same as one never stopped.

  Returns:
    A :class:`RunResult` with the loss of every step and the metric at each
    evaluation.
  """
  from tqdm.auto import tqdm

  start, cpu_start = time.perf_counter(), time.process_time()
  model = task.make_model(nnx.Rngs(seed))
  tx = with_schedule(tx, steps, task.warmup, task.cooldown)
  if qk_clip is not None:
    if task.max_logits_loss is None or task.qk_names is None:
      raise ValueError(f"--qk-clip: the {task.name} task has no attention.")
    tx = optax.chain(tx, om.qk_clip(qk_clip, query_names=task.qk_names[0],
                                    key_names=task.qk_names[1]))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  tracks_logits = task.max_logits_loss is not None
  if tracks_logits:
    train_step = make_max_logits_train_step(task.max_logits_loss,
                                            clip=qk_clip is not None)
  else:
    train_step = make_train_step(task.loss)
  max_logits: list[tuple[int, Any]] = []
  rng = np.random.default_rng(seed)
  batches = task.batches(rng)
  evals = set(eval_steps(steps, num_evals))

  history: list[tuple[int, float]] = []
  eval_history: list[tuple[int, float]] = []
  pending: list[tuple[int, jax.Array]] = []
  # Wall time of the timed steps (every step but the first of a session,
  # which compiles), batches included, evaluations excluded; the clock runs
  # from a finished step to a finished step.
  step_seconds, timed, clock, clock_step = 0.0, 0, None, 0
  seconds_before = cpu_before = 0.0
  first, resumed_from = 1, None
  if checkpoints is not None:
    restored = checkpoints.restore(nnx.state((model, optimizer)))
    if restored is not None:
      done, state, record = restored
      nnx.update((model, optimizer), state)
      for _ in range(done):  # the data position
        next(batches)
      if generator_state(rng) != record["rng"]:
        raise ValueError(
            f"--resume: the batches drawn up to step {done} do not end in "
            f"the data generator's state saved in {checkpoints.directory} "
            "(other data?). Resume with the same data, or give another "
            "--checkpoint-dir.")
      history = [(int(s), float(v)) for s, v in record["history"]]
      eval_history = [(int(s), float(v)) for s, v in record["eval_history"]]
      max_logits = [(int(s), float(v)) for s, v in record["max_logits"]]
      step_seconds, timed = record["step_seconds"], record["timed_steps"]
      seconds_before, cpu_before = record["seconds"], record["cpu_seconds"]
      first, resumed_from = done + 1, done
  bar = tqdm(total=steps, initial=first - 1, desc=f"{task.name}/{name}",
             leave=True,
             disable=None if progress is None else not progress,
             dynamic_ncols=True, mininterval=0.5)

  def flush():
    history.extend((s, float(v)) for s, v in jax.device_get(pending))
    pending.clear()

  def save(step):
    flush()
    checkpoints.save(step, nnx.state((model, optimizer)), {
        "rng": generator_state(rng), "history": history,
        "eval_history": eval_history,
        "max_logits": [(s, float(v)) for s, v in jax.device_get(max_logits)],
        "step_seconds": step_seconds, "timed_steps": timed,
        "seconds": seconds_before + time.perf_counter() - start,
        "cpu_seconds": cpu_before + time.process_time() - cpu_start,
    }, force=True)

  for step in range(first, steps + 1):
    batch = next(batches)
    loss = train_step(model, optimizer, batch)
    if tracks_logits:
      loss, top = loss
      max_logits.append((step, top))
    pending.append((step, loss))
    if step == first or step % 10 == 0 or step in evals or step == steps:
      flush()  # waits for the step to finish
      now = time.perf_counter()
      if clock is not None:
        step_seconds += now - clock
        timed += step - clock_step
      clock, clock_step = now, step
      bar.set_postfix(loss=f"{history[-1][1]:.4f}", refresh=False)
    bar.update(1)
    if step in evals:
      eval_history.append((step, float(task.evaluate(model))))
      bar.set_postfix(loss=f"{history[-1][1]:.4f}",
                      **{task.metric: f"{eval_history[-1][1]:.4f}"})
      clock = time.perf_counter()
    if checkpoints is not None and (step % checkpoints.every == 0
                                    or step == steps):
      save(step)
      clock = time.perf_counter()
  flush()
  bar.close()
  if checkpoints is not None:
    checkpoints.close()
  max_logit_history = [(s, float(v)) for s, v in jax.device_get(max_logits)]
  return RunResult(
      optimizer=name, learning_rate=float(learning_rate),
      options=dict(options or {}), history=history,
      eval_history=eval_history, metric=task.metric,
      seconds=seconds_before + time.perf_counter() - start,
      step_ms=1000 * step_seconds / timed if timed else math.nan,
      cpu_seconds=cpu_before + time.process_time() - cpu_start,
      items_per_second=(task.items_per_step * timed / step_seconds
                        if timed and task.items_per_step and step_seconds > 0
                        else math.nan),
      item_name=task.item_name, max_logit_history=max_logit_history,
      qk_clip=qk_clip, resumed_from=resumed_from)
