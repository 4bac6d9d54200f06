"""Compare AdamW with the optax_muon optimizers on one task.

Trains one model per optimizer on the same data from the same initial weights,
prints a results table and writes ``OUT/results.json`` and PNG plots::

  python examples/compare.py --task lm --out results/lm
  python examples/compare.py --task image --optimizers adamw,muon --steps 500 \\
      --out results/image --lr muon=0.03 --opt muon:ns_coeffs=polar_express
  python examples/compare.py --task implicit --lr-sweep --out results/sweep
  # on a GPU:
  python examples/compare.py --task lm --preset gpt2-small --bf16 \\
      --data-dir fineweb10B --steps 2000 --optimizers adamw,muon

``results.json``::

  {"task": str, "steps": int, "runs": [{"optimizer": str,
   "learning_rate": float, "final_train_loss": float,
   "eval_metric": {"name": str, "value": float}, "seconds": float,
   "history": [[step, loss], ...], "tokens_per_second": float,
   "steps_to_target": int, ...}], "target_loss": {...}, "options": {...},
   ...}

``final_train_loss`` is the mean loss of the last 10 steps; ``seconds`` the
run's wall time (model build, compilation, training and evaluations),
``cpu_seconds`` its CPU time (all threads; a fairer figure when other
processes share the machine), ``step_ms`` the mean wall time of a training
step after the first (which compiles), batches included and evaluations
excluded; ``tokens_per_second`` (``images_per_second`` for ``image``) the
throughput over the same steps; ``steps_to_target`` the first step whose
10-step trailing mean loss is at most ``target_loss["value"]``;
non-finite numbers (a diverged run) and targets never reached are written as
``null``. A run continued with ``--resume`` records ``resumed_from``, the
step of the checkpoint it continued from; its timings then add up the
sessions (each session's first step compiles and is not timed). The
top-level ``options`` are the model and data settings (preset, sizes, batch
size, compute dtype).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flax import nnx  # noqa: E402

import optax_muon as om  # noqa: E402
from examples import optimizers as opt_registry  # noqa: E402
from examples import tasks, training  # noqa: E402
from examples.checkpoints import Checkpoints  # noqa: E402
from examples.data import DataError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="compare.py",
      description="Train one model per optimizer on a task and compare.")
  parser.add_argument("--task", required=True, choices=tasks.TASKS)
  parser.add_argument(
      "--optimizers", default=None,
      help="comma-separated names from: " + ", ".join(opt_registry.OPTIMIZERS)
      + f" (default: {','.join(opt_registry.DEFAULT_OPTIMIZERS)}; with "
      "--lr-sweep: adamw,muon)")
  parser.add_argument("--steps", type=int, default=None,
                      help="optimizer steps per run (default: the task's)")
  parser.add_argument("--out", default=None,
                      help="output folder (default: results/<task>)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds the initial weights and the batch order")
  parser.add_argument(
      "--lr", action="append", default=[], metavar="NAME=VALUE",
      help="learning rate of one optimizer, e.g. --lr muon=0.03 (repeatable)")
  parser.add_argument(
      "--opt", action="append", default=[], metavar="NAME:KEY=VALUE[,...]",
      help="keyword arguments of one optimizer, e.g. --opt "
      "muon:ns_coeffs=polar_express (repeatable)")
  parser.add_argument(
      "--data-dir", default=None,
      help="image: an extracted cifar-10-batches-py; lm: a folder of FineWeb "
      ".bin shards (default: data that ships with the packages)")
  parser.add_argument(
      "--lr-sweep", action="store_true",
      help="final metric against learning rate over --lr-grid for each "
      "optimizer (plot: <task>_lr_sweep.png)")
  parser.add_argument(
      "--lr-grid", default=None,
      help="comma-separated learning rates for --lr-sweep (default: "
      "1e-4..1 in half-decades)")
  parser.add_argument(
      "--warmup", type=float, default=None,
      help="fraction of the steps with a linear learning-rate warmup "
      "(default: the task's)")
  parser.add_argument(
      "--cooldown", type=float, default=None,
      help="fraction of the steps, at the end, with a linear decay to zero "
      "(default: the task's)")
  parser.add_argument("--num-evals", type=int, default=10,
                      help="evaluations of the metric per run")
  parser.add_argument("--tiny", action="store_true",
                      help="tiny data and model (for tests; with --preset, "
                      "a shrunk version of the preset)")
  parser.add_argument(
      "--preset", default=None,
      help="model preset; lm: default (the 2-core CPU demo), gpt2-small "
      "(12x768, context 1024), gpt2-medium (24x1024, context 1024); image: "
      "cnn (default), resnet (CIFAR-10, needs --data-dir)")
  parser.add_argument("--seq-len", type=int, default=None,
                      help="lm: context length (default: the preset's)")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="lm, image: batch size (default: the preset's)")
  parser.add_argument(
      "--dtype", default="float32", choices=("float32", "bfloat16"),
      help="lm, image: compute dtype; parameters and optimizer state stay "
      "float32 (default float32)")
  parser.add_argument("--bf16", dest="dtype", action="store_const",
                      const="bfloat16", help="same as --dtype bfloat16")
  parser.add_argument(
      "--target-loss", type=float, default=None,
      help="report the first step whose 10-step mean training loss is at "
      "most this (default: AdamW's final train loss when adamw runs, else "
      "the highest final train loss of the runs)")
  parser.add_argument(
      "--qk-clip", type=float, default=None, metavar="TAU",
      help="lm: chain optax_muon.qk_clip(TAU) after every optimizer (MuonClip:"
      " rescale a head's query and key kernels when its max attention logit "
      "exceeds TAU)")
  parser.add_argument(
      "--progress", action=argparse.BooleanOptionalAction, default=None,
      help="progress bar (default: on a terminal)")
  parser.add_argument(
      "--checkpoint-dir", default=None,
      help="save each run's state here (orbax; one subfolder per run) every "
      "--checkpoint-every steps and after its last; with --resume, continue "
      "from the latest checkpoints")
  parser.add_argument("--checkpoint-every", type=int, default=100,
                      help="steps between checkpoints (default 100)")
  parser.add_argument("--checkpoint-keep", type=int, default=2,
                      help="how many of a run's latest checkpoints to keep "
                      "(default 2)")
  parser.add_argument(
      "--resume", action="store_true",
      help="continue an interrupted compare.py from --checkpoint-dir: "
      "finished runs are read back, the interrupted one continues from its "
      "latest checkpoint, the others start (same command otherwise)")
  return parser


def parse_args(argv=None) -> tuple[argparse.Namespace, dict]:
  """Parses and checks the command line; returns the namespace and the
  per-optimizer plan ``{name: (learning_rate or None, options)}``."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    if args.optimizers:
      names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    elif args.lr_sweep:
      names = ["adamw", "muon"]
    else:
      names = list(opt_registry.DEFAULT_OPTIMIZERS)
    for name in names:
      opt_registry.check_name(name)
    if len(set(names)) != len(names):
      raise ValueError(f"--optimizers lists a name twice: {args.optimizers}")
    lrs, overrides = {}, {name: {} for name in names}
    for spec in args.lr:
      name, lr = opt_registry.parse_lr(spec)
      if name not in names:
        raise ValueError(f"--lr {spec!r}: {name!r} is not in --optimizers.")
      lrs[name] = lr
    for spec in args.opt:
      name, options = opt_registry.parse_opt(spec)
      if name not in names:
        raise ValueError(f"--opt {spec!r}: {name!r} is not in --optimizers.")
      overrides[name].update(options)
    plan = {name: (lrs.get(name), opt_registry.options_for(
        name, overrides[name])) for name in names}
    if args.steps is not None and args.steps < 1:
      raise ValueError("--steps must be at least 1.")
    for flag in ("warmup", "cooldown"):
      value = getattr(args, flag)
      if value is not None and not 0 <= value <= 1:
        raise ValueError(f"--{flag} must be a fraction in [0, 1].")
    module = tasks.get(args.task)
    presets = getattr(module, "PRESETS", ())
    if args.preset is not None and args.preset not in presets:
      raise ValueError(
          f"--preset {args.preset!r}: the {args.task} task has "
          + (f"presets {', '.join(presets)}." if presets else "no presets."))
    for flag, allowed in (("seq_len", ("lm",)),
                          ("batch_size", ("lm", "image"))):
      value = getattr(args, flag)
      if value is not None and args.task not in allowed:
        raise ValueError(f"--{flag.replace('_', '-')} is for --task "
                         f"{' or '.join(allowed)}.")
      if value is not None and value < 1:
        raise ValueError(f"--{flag.replace('_', '-')} must be at least 1.")
    if args.dtype != "float32" and args.task not in ("lm", "image"):
      raise ValueError("--dtype bfloat16/--bf16 is for --task lm or image.")
    if args.target_loss is not None and not math.isfinite(args.target_loss):
      raise ValueError("--target-loss must be a finite number.")
    if args.resume and args.checkpoint_dir is None:
      raise ValueError("--resume needs --checkpoint-dir.")
    for flag in ("checkpoint_every", "checkpoint_keep"):
      if getattr(args, flag) < 1:
        raise ValueError(f"--{flag.replace('_', '-')} must be at least 1.")
    if args.lr_grid is not None:
      args.lr_grid = [float(v) for v in args.lr_grid.split(",") if v.strip()]
      if not args.lr_grid or min(args.lr_grid) <= 0:
        raise ValueError("--lr-grid needs positive learning rates.")
  except ValueError as e:
    parser.error(str(e))
  return args, plan


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


def _machine() -> str:
  import jax

  backend = jax.default_backend()
  accel = "" if backend == "cpu" else (
      f", {jax.device_count()} x {jax.devices()[0].device_kind}")
  return (f"{platform.machine()} CPU x{os.cpu_count()}{accel}, "
          f"JAX {jax.__version__} {backend}")


def _load_average() -> float | None:
  """The 1-minute load average (other processes slow the timings down)."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def _checkpoints(args, task, steps, name, lr, options
                 ) -> Checkpoints | None:
  """The checkpoints of one run (``--checkpoint-dir``/NAME, with the
  learning rate in a sweep), or ``None``. What must match for a resume to
  continue the same run goes into its config."""
  if args.checkpoint_dir is None:
    return None
  folder = name if not args.lr_sweep else f"{name}@lr={lr:g}"
  return Checkpoints(
      Path(args.checkpoint_dir) / folder.replace(os.sep, "_"),
      every=args.checkpoint_every, keep=args.checkpoint_keep,
      resume=args.resume, config={
          "task": task.name, "task_options": {
              k: training._jsonable(v) for k, v in task.options.items()},
          "optimizer": name, "learning_rate": lr,
          "options": {k: training._jsonable(v) for k, v in options.items()},
          "steps": steps, "seed": args.seed, "warmup": task.warmup,
          "cooldown": task.cooldown, "qk_clip": args.qk_clip,
          "data_dir": args.data_dir})


def main(argv=None) -> dict:
  """Runs the comparison; returns what it writes to ``results.json``."""
  args, plan = parse_args(argv)
  module = tasks.get(args.task)
  kwargs = {}
  if args.preset is not None:
    kwargs["preset"] = args.preset
  if args.seq_len is not None:
    kwargs["seq_len"] = args.seq_len
  if args.batch_size is not None:
    kwargs["batch_size"] = args.batch_size
  if args.dtype != "float32":
    kwargs["compute_dtype"] = args.dtype
  try:
    task = module.make_task(data_dir=args.data_dir, tiny=args.tiny, **kwargs)
  except (DataError, ValueError, FileNotFoundError, NotADirectoryError) as e:
    # DataError: a --data-dir the task cannot read; ValueError: e.g. a preset
    # that needs a --data-dir.
    raise SystemExit(f"compare.py: error: {e}") from None
  steps = args.steps or task.default_steps
  task = dataclasses.replace(
      task,
      warmup=task.warmup if args.warmup is None else args.warmup,
      cooldown=task.cooldown if args.cooldown is None else args.cooldown)
  out = Path(args.out or f"results/{args.task}")
  out.mkdir(parents=True, exist_ok=True)

  jobs = []  # (name, learning rate, options)
  for name, (lr, options) in plan.items():
    if args.lr_sweep:
      grid = args.lr_grid or getattr(module, "LR_GRID", None) or (
          1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
      jobs += [(name, g, options) for g in grid]
    else:
      jobs.append((name, lr or opt_registry.default_lr(
          name, task.learning_rates, options), options))

  print(f"task {task.name}: {task.summary}")
  print(f"{steps} steps (warmup {task.warmup:g}, cooldown {task.cooldown:g}),"
        f" seed {args.seed}, {_machine()}")
  # How the optimizers route every leaf of this model (shapes only).
  print(om.describe(nnx.state(nnx.eval_shape(
      lambda: task.make_model(nnx.Rngs(args.seed))), nnx.Param),
      group_layers=True))
  adamw_lr = task.learning_rates["adamw"]
  load_before = _load_average()
  wall_start, cpu_start = time.perf_counter(), time.process_time()
  results = []
  for name, lr, options in jobs:
    tx = opt_registry.build(name, lr, options, adamw_learning_rate=adamw_lr)
    try:
      checkpoints = _checkpoints(args, task, steps, name, lr, options)
    except ValueError as e:  # a folder of another run
      raise SystemExit(f"compare.py: error: {e}") from None
    try:
      result = training.train(
          task, tx, steps=steps, seed=args.seed, name=name, learning_rate=lr,
          options=options, num_evals=args.num_evals, progress=args.progress,
          qk_clip=args.qk_clip, checkpoints=checkpoints)
    except ValueError as e:
      if not str(e).startswith("--resume"):
        raise
      raise SystemExit(f"compare.py: error: {e}") from None
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

  target = pick_target(results, args.target_loss, args.lr_sweep)
  for r in results:
    r.steps_to_target = training.steps_to_target(r.history, target["value"])
  table = format_table(task, results, target["value"])
  print()
  print(table)
  print(f"\ntotal {time.perf_counter() - wall_start:.1f} s wall, "
        f"{time.process_time() - cpu_start:.1f} s CPU")
  record = {
      "task": task.name,
      "steps": steps,
      "runs": [r.to_json() for r in results],
      "seed": args.seed,
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
      "machine": _machine(),
      "load_average": [load_before, _load_average()],
      "command": "python examples/compare.py " + shlex.join(
          sys.argv[1:] if argv is None else list(argv)),
      "lr_sweep": bool(args.lr_sweep),
      "qk_clip": args.qk_clip,
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  (out / "results.json").write_text(to_json_text(record))
  (out / "table.md").write_text(table + "\n")
  if args.lr_sweep:
    plots = [plot_sweep(task, results, out)]
  else:
    plots = plot_curves(task, results, out)
  print(f"\nwrote {out / 'results.json'}, " + ", ".join(map(str, plots)))
  return record


if __name__ == "__main__":
  main()
