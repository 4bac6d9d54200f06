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

This module is the command line (:func:`build_parser`, :func:`parse_args`,
:func:`main`); :mod:`examples.runs` runs the optimizers and
:mod:`examples.report` writes the table, plots and ``results.json``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples import optimizers as opt_registry  # noqa: E402
from examples import report, runs, studies, tasks  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
  """The command line; ``--optimizers`` takes the registry's names, the
  studies' included (:func:`examples.studies.load`)."""
  studies.load()
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


def main(argv=None) -> dict:
  """Runs the comparison; returns what it writes to ``results.json``."""
  args, plan = parse_args(argv)
  try:
    task = runs.make_task(
        args.task, data_dir=args.data_dir, tiny=args.tiny, preset=args.preset,
        seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype,
        warmup=args.warmup, cooldown=args.cooldown)
  except runs.SetupError as e:
    raise SystemExit(f"compare.py: error: {e}") from None
  steps = args.steps or task.default_steps
  settings = runs.Settings(
      steps=steps, seed=args.seed, num_evals=args.num_evals,
      progress=args.progress, qk_clip=args.qk_clip, data_dir=args.data_dir,
      lr_sweep=args.lr_sweep, checkpoint_dir=args.checkpoint_dir,
      checkpoint_every=args.checkpoint_every,
      checkpoint_keep=args.checkpoint_keep, resume=args.resume)
  out = Path(args.out or f"results/{args.task}")
  out.mkdir(parents=True, exist_ok=True)
  jobs = runs.plan_jobs(plan, task, runs.sweep_grid(
      args.task, args.lr_grid) if args.lr_sweep else None)

  print(f"task {task.name}: {task.summary}")
  print(f"{steps} steps (warmup {task.warmup:g}, cooldown {task.cooldown:g}),"
        f" seed {args.seed}, {report.machine()}")
  print(runs.routing(task, args.seed))
  load_before = report.load_average()
  wall_start, cpu_start = time.perf_counter(), time.process_time()
  try:
    results = runs.run_jobs(task, jobs, settings)
  except runs.SetupError as e:
    raise SystemExit(f"compare.py: error: {e}") from None

  target = report.pick_target(results, args.target_loss, args.lr_sweep)
  report.score(results, target)
  table = report.format_table(task, results, target["value"])
  print()
  print(table)
  print(f"\ntotal {time.perf_counter() - wall_start:.1f} s wall, "
        f"{time.process_time() - cpu_start:.1f} s CPU")
  record = report.make_record(
      task, steps, results, target, seed=args.seed, lr_sweep=args.lr_sweep,
      qk_clip=args.qk_clip, load_before=load_before,
      command="python examples/compare.py " + shlex.join(
          sys.argv[1:] if argv is None else list(argv)))
  plots = report.write(out, task, results, record, table, args.lr_sweep)
  print(f"\nwrote {out / 'results.json'}, " + ", ".join(map(str, plots)))
  return record


if __name__ == "__main__":
  main()
