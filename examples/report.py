"""The report of a ``compare.py`` run: table, plots, ``results.json``.

* :func:`format_table`: the Markdown table printed and written to
  ``table.md``;
* :func:`pick_target` and :func:`score`: the training-loss target of the
  ``steps_to_target`` column and each run's steps to it;
* :func:`plot_curves`, :func:`plot_sweep`: the PNG plots;
* :func:`make_record`, :func:`to_json_text`, :func:`write`: ``results.json``
  (its schema is in ``compare.py``'s docstring and ``examples/README.md``);
* :func:`machine`, :func:`load_average`: what the timings ran on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from pathlib import Path

from examples import training


def format_table(task: training.Task, results: list[training.RunResult],
                 target: float | None = None) -> str:
  """The results as a Markdown table (best metric in bold), with the
  throughput when the task counts its items and the steps to ``target``."""
  values = [r.eval_metric for r in results]
  finite = [v for v in values if math.isfinite(v)]
  best = (max if task.higher_is_better else min)(finite) if finite else None
  rate = f" {task.item_name}/s |" if task.items_per_step else ""
  reach = f" steps to {target:.4g} |" if target is not None else ""
  lines = [
      f"| optimizer | learning rate | final train loss | {task.metric} | "
      f"seconds | CPU seconds | ms/step |{rate}{reach}",
      "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (
          bool(rate) + bool(reach)),
  ]
  for r, v in zip(results, values):
    metric = f"{v:.4f}" if math.isfinite(v) else "diverged"
    if best is not None and v == best:
      metric = f"**{metric}**"
    loss = r.final_train_loss
    loss = f"{loss:.4g}" if math.isfinite(loss) else "diverged"
    line = (f"| {r.optimizer} | {r.learning_rate:.3g} | {loss} | {metric} | "
            f"{r.seconds:.1f} | {r.cpu_seconds:.1f} | {r.step_ms:.1f} |")
    if rate:
      ips = r.items_per_second
      line += f" {ips:,.0f} |" if math.isfinite(ips) else " - |"
    if reach:
      line += (f" {r.steps_to_target} |" if r.steps_to_target is not None
               else " not reached |")
    lines.append(line)
  return "\n".join(lines)


def pick_target(results: list[training.RunResult], explicit: float | None,
                lr_sweep: bool = False) -> dict:
  """The training-loss target of ``steps_to_target``: ``explicit`` if given;
  else AdamW's final train loss when exactly one adamw run is in
  ``results``; else the highest finite final train loss (the loss every run
  reached); none for a learning-rate sweep without ``explicit``.

  Returns:
    ``{"value": float or None, "source": str}``.
  """
  if explicit is not None:
    return {"value": float(explicit), "source": "--target-loss"}
  if lr_sweep:
    return {"value": None, "source": "none (learning-rate sweep)"}
  adamw = [r for r in results if r.optimizer == "adamw"]
  if len(adamw) == 1 and math.isfinite(adamw[0].final_train_loss):
    return {"value": adamw[0].final_train_loss,
            "source": "adamw final_train_loss"}
  finite = [r.final_train_loss for r in results
            if math.isfinite(r.final_train_loss)]
  if finite:
    return {"value": max(finite), "source": "highest final_train_loss"}
  return {"value": None, "source": "none (every run diverged)"}


def score(results: list[training.RunResult], target: dict) -> None:
  """Sets each run's ``steps_to_target`` to the first step whose trailing
  mean loss is at most ``target["value"]`` (from :func:`pick_target`)."""
  for r in results:
    r.steps_to_target = training.steps_to_target(r.history, target["value"])


def _smooth(values, weight: float):
  """Exponential moving average (debiased), for noisy mini-batch losses."""
  out, avg = [], 0.0
  for i, v in enumerate(values, 1):
    avg = weight * avg + (1 - weight) * v
    out.append(avg / (1 - weight ** i))
  return out


def plot_curves(task: training.Task, results: list[training.RunResult],
                out: Path) -> list[Path]:
  """``<task>_loss.png`` (training loss) and ``<task>_<metric>.png``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  weight = 0.0 if task.name == "implicit" else 0.9
  for r in results:
    steps = [s for s, v in r.history if math.isfinite(v)]
    losses = [v for _, v in r.history if math.isfinite(v)]
    if losses:
      ax.plot(steps, _smooth(losses, weight), label=r.optimizer, lw=1.4)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss" + (" (EMA 0.9)" if weight else ""))
  ax.set_title(f"{task.name}: training loss")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  paths.append(out / f"{task.name}_loss.png")
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for r in results:
    pts = [(s, v) for s, v in r.eval_history if math.isfinite(v)]
    if pts:
      ax.plot(*zip(*pts), marker="o", ms=3, label=r.optimizer, lw=1.4)
  ax.set_xlabel("step")
  ax.set_ylabel(task.metric)
  ax.set_title(f"{task.name}: {task.metric}")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  paths.append(out / f"{task.name}_{task.metric}.png")
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


def plot_sweep(task: training.Task, results: list[training.RunResult],
               out: Path) -> Path:
  """``<task>_lr_sweep.png``: final metric against learning rate."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  by_name: dict[str, list[training.RunResult]] = {}
  for r in results:
    by_name.setdefault(r.optimizer, []).append(r)
  finite = [r.eval_metric for r in results if math.isfinite(r.eval_metric)]
  floor = min(finite) if finite else 0.0
  for name, runs in by_name.items():
    runs = sorted(runs, key=lambda r: r.learning_rate)
    xs = [r.learning_rate for r in runs]
    ys = [r.eval_metric if math.isfinite(r.eval_metric) else math.nan
          for r in runs]
    (line,) = ax.plot(xs, ys, marker="o", label=name, lw=1.4)
    bad = [x for x, y in zip(xs, ys) if not math.isfinite(y)]
    if bad:
      ax.plot(bad, [floor] * len(bad), "x", color=line.get_color(), ms=8,
              label=f"{name} diverged")
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel(f"final {task.metric}")
  ax.set_title(f"{task.name}: learning-rate sensitivity")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  path = out / f"{task.name}_lr_sweep.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def to_json_text(record: dict) -> str:
  """``record`` as indented JSON with each ``[step, value]`` pair on one
  line."""
  text = json.dumps(record, indent=1)
  number = r"(-?[0-9][0-9.eE+-]*|null)"
  return re.sub(rf"\[\s+{number},\s+{number}\s+\]", r"[\1, \2]",
                text) + "\n"


def machine() -> str:
  """The CPU, its core count, the accelerators and the JAX version, e.g.
  ``"x86_64 CPU x2, JAX 0.10.2 cpu"``."""
  import jax

  backend = jax.default_backend()
  accel = "" if backend == "cpu" else (
      f", {jax.device_count()} x {jax.devices()[0].device_kind}")
  return (f"{platform.machine()} CPU x{os.cpu_count()}{accel}, "
          f"JAX {jax.__version__} {backend}")


def load_average() -> float | None:
  """The 1-minute load average (other processes slow the timings down)."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def make_record(task: training.Task, steps: int,
                results: list[training.RunResult], target: dict, *,
                seed: int, lr_sweep: bool, qk_clip: float | None,
                command: str, load_before: float | None) -> dict:
  """What ``results.json`` holds (the schema of ``compare.py``'s docstring):
  the runs, the settings, the target, the machine and the command."""
  return {
      "task": task.name,
      "steps": steps,
      "runs": [r.to_json() for r in results],
      "seed": seed,
      "warmup": task.warmup,
      "cooldown": task.cooldown,
      "summary": task.summary,
      "options": {k: training._jsonable(v) for k, v in task.options.items()},
      "target_loss": {
          "value": training._finite_or_none(target["value"])
          if target["value"] is not None else None,
          "source": target["source"],
          "smoothing": f"mean of the last {training.FINAL_LOSS_WINDOW} "
                       "steps' losses"},
      "machine": machine(),
      "load_average": [load_before, load_average()],
      "command": command,
      "lr_sweep": bool(lr_sweep),
      "qk_clip": qk_clip,
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }


def write(out: Path, task: training.Task, results: list[training.RunResult],
          record: dict, table: str, lr_sweep: bool) -> list[Path]:
  """Writes ``results.json``, ``table.md`` and the plots (the sweep's with
  ``lr_sweep``) under ``out``; returns the plots' paths."""
  (out / "results.json").write_text(to_json_text(record))
  (out / "table.md").write_text(table + "\n")
  if lr_sweep:
    return [plot_sweep(task, results, out)]
  return plot_curves(task, results, out)
