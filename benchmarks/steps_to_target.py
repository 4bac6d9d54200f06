"""Steps to Muon's final validation loss on the lm task (issue 20).

Every optimizer (row) trains the lm example's GPT (``examples/tasks/lm.py``,
default preset 4 x 128, context 64, batch 16, pydoc bytes) for ``--steps``
steps under the same trapezoid schedule (the task's: 5% linear warmup, the
last 30% a linear decay to zero), given to every optimizer as a learning-rate
schedule (Muon chain and AdamW part alike), and is evaluated every
``--eval-every`` steps on a fixed subset of the validation windows.

Per row: a small learning-rate sweep at seed 0 (``ROWS``' grids), then the
best learning rate (lowest final validation loss) at seeds ``1 ..
--seeds - 1`` (seed 0 reused from the sweep). Reported per row: final
validation loss (mean and range over seeds), the steps it takes to reach
Muon's final validation loss of the same seed (linearly interpolated
between evaluations), its ratio to Muon's own, and the wall time per
training step, timed round-robin over all rows in one process at the end
(``_common.interleaved``: medians of ``--timing-reps`` windows of 10 steps),
as a ratio to Muon's.

Every finished run is written to the JSON at once, and a rerun with the same
``--out`` skips the runs it holds, so the script can be stopped and resumed.

Usage (the README's table is these three commands; a rerun skips the runs
its JSON holds):
  python benchmarks/steps_to_target.py \
      --rows muon,normuonh_pe,muonh,normuonh,normuon,adamuon,adamw \
      --whole-rows 3 --no-timing --out benchmarks/results/steps_to_target.json
  python benchmarks/steps_to_target.py --timing-only \
      --rows adamw,muon,normuon,adamuon,muonh,normuonh,normuonh_pe \
      --out benchmarks/results/steps_to_target.json
  python benchmarks/steps_to_target.py --report \
      --out benchmarks/results/steps_to_target.json
  # a learning-rate sweep at another width (not run yet on the CPU)
  python benchmarks/steps_to_target.py --d-model 64 --steps 400 \
      --rows muon,muonh --grid muon=0.01,0.02,0.04 \
      --grid muonh=0.005,0.01,0.02 --seeds 1 --no-timing \
      --out benchmarks/results/steps_to_target_d64.json

Caveat: steps to a target read off one fixed-length schedule overstate what
a row needs when it is faster than Muon (a schedule that ends at that step
would reach the target sooner), so ratios below 1 are conservative.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from examples import optimizers as registry  # noqa: E402
from examples import training  # noqa: E402
from examples.data import pydoc_text  # noqa: E402
from examples.tasks import lm  # noqa: E402

#: row name -> (label, registry name, learning rates of the seed-0 sweep).
#: The default grids are the lm task's tuned rates alone (AdamW 1e-3 and the
#: Muon family 0.02, from sweeps at 300 steps: examples/README.md; MuonH's
#: relative step at init equals Muon's lr, docs/ALGORITHMS.md "Hyperball"):
#: on a 2-core CPU shared with other jobs a 1000-step run takes about five
#: minutes, and 7 rows x 2 seeds fill the hour. MuonH also gets 0.01 (its
#: relative step stays at lr while Muon's falls as its weights grow), and
#: NorMuon + Hyperball, run after it, MuonH's best (0.01 in our run).
#: ``--grid`` adds points.
ROWS = {
    "adamw": ("AdamW", "adamw", (1e-3,)),
    "muon": ("Muon", "muon", (0.02,)),
    "normuon": ("NorMuon", "normuon", (0.02,)),
    "adamuon": ("AdaMuon", "adamuon", (0.02,)),
    "muonh": ("MuonH", "muonh", (0.02, 0.01)),
    "normuonh": ("NorMuon + Hyperball", "normuonh", (0.01,)),
    "normuonh_pe": ("NorMuon + Polar Express + Hyperball", "normuonh_pe",
                    (0.02,)),
}
BASELINE = "muon"
ADAMW_LR = lm.LEARNING_RATES["adamw"]
TIMING_WINDOW = 10


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="benchmarks/results/steps_to_target.json")
  p.add_argument("--plot", default=None,
                 help="PNG path (default: the JSON's path with .png)")
  p.add_argument("--rows", default=",".join(ROWS),
                 help="comma-separated names from: " + ", ".join(ROWS))
  p.add_argument("--grid", action="append", default=[],
                 metavar="ROW=LR,LR,...", help="a row's sweep (repeatable)")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--eval-every", type=int, default=25)
  p.add_argument("--eval-windows", type=int, default=64,
                 help="validation windows per evaluation (a fixed subset)")
  p.add_argument("--seeds", type=int, default=2)
  p.add_argument("--d-model", type=int, default=128)
  p.add_argument("--warmup", type=float, default=0.05)
  p.add_argument("--cooldown", type=float, default=0.3)
  p.add_argument("--timing-reps", type=int, default=5)
  p.add_argument("--no-timing", action="store_true")
  p.add_argument("--timing-only", action="store_true",
                 help="only measure the step times of --rows, into "
                 "<out>_timing.json (so it may run beside the training "
                 "runs); the report reads them from there")
  p.add_argument("--whole-rows", type=int, default=None,
                 help="run the first N rows of --rows seed after seed, then "
                 "the others' seed 0, then their other seeds (default: all "
                 "rows whole)")
  p.add_argument("--report", action="store_true",
                 help="only print the table and draw the plot from --out")
  return p.parse_args(argv)


def grids(args) -> dict[str, tuple[float, ...]]:
  out = {}
  for name in args.rows.split(","):
    if name not in ROWS:
      raise SystemExit(f"unknown row {name!r}: choose from {', '.join(ROWS)}")
    out[name] = ROWS[name][2]
  for spec in args.grid:
    name, _, lrs = spec.partition("=")
    if name not in out:
      raise SystemExit(f"--grid {spec!r}: {name!r} is not in --rows")
    out[name] = tuple(float(x) for x in lrs.split(","))
  return out


def config_of(args) -> dict:
  return {"steps": args.steps, "eval_every": args.eval_every,
          "eval_windows": args.eval_windows, "d_model": args.d_model,
          "warmup": args.warmup, "cooldown": args.cooldown,
          "adamw_learning_rate": ADAMW_LR, "preset": "default"}


# ----------------------------------------------------------------- runs ----


def make_task(args) -> training.Task:
  config = dataclasses.replace(lm.PRESETS["default"].config,
                               d_model=args.d_model)
  task = lm.make_task(config=config)
  _, val_tokens = pydoc_text.split(pydoc_text.load_bytes(), 0.1)
  val = lm.fixed_windows(val_tokens, config.seq_len + 1, args.eval_windows)
  val_loss = nnx.jit(lm.loss_fn)

  def evaluate(model):
    return float(val_loss(model, val))

  # The schedule is given to the optimizers as their learning rates, so the
  # training loop adds none.
  return dataclasses.replace(task, evaluate=evaluate, warmup=0.0,
                             cooldown=0.0)


def build(name: str, lr: float, args):
  mult = training.lr_multiplier(args.steps, args.warmup, args.cooldown)
  alias, options = registry.OPTIMIZERS[ROWS[name][1]]
  sched = lambda c: lr * mult(c)
  if alias is registry.adamw:
    return alias(sched, **options), options
  adamw_sched = lambda c: ADAMW_LR * mult(c)
  return alias(sched, adamw_learning_rate=adamw_sched, **options), options


def key(name: str, lr: float, seed: int) -> str:
  return f"{name}|lr={lr:g}|seed={seed}"


def run_one(task, name, lr, seed, args) -> dict:
  tx, options = build(name, lr, args)
  res = training.train(
      task, tx, steps=args.steps, seed=seed, name=name, learning_rate=lr,
      options=options, num_evals=args.steps // args.eval_every,
      progress=False)
  evals = [[s, v if math.isfinite(v) else None] for s, v in res.eval_history]
  return {"row": name, "learning_rate": lr, "seed": seed,
          "final_val_loss": evals[-1][1], "eval_history": evals,
          "final_train_loss": (res.final_train_loss
                               if math.isfinite(res.final_train_loss)
                               else None),
          "step_ms": res.step_ms, "seconds": res.seconds,
          "cpu_seconds": res.cpu_seconds}


def best_lr(runs: dict, name: str, grid) -> float | None:
  done = [(r["final_val_loss"], r["learning_rate"]) for r in runs.values()
          if r["row"] == name and r["seed"] == 0
          and r["learning_rate"] in grid and r["final_val_loss"] is not None]
  return min(done)[1] if done and len(done) == len(grid) else None


def save(path, payload):
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)


def timing(task, names, args) -> dict:
  """Wall time of a training step per row, round-robin in this process."""
  batches = task.batches(np.random.default_rng(0))
  fixed = [next(batches) for _ in range(TIMING_WINDOW)]
  cands = {}
  for name in names:
    model = task.make_model(nnx.Rngs(0))
    tx, _ = build(name, ROWS[name][2][0], args)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step = training.make_max_logits_train_step(task.max_logits_loss,
                                               clip=False)

    def window(model=model, opt=opt, step=step):
      for b in fixed:
        loss, _ = step(model, opt, b)
      jax.block_until_ready(loss)

    cands[name] = window
  times = _common.interleaved(cands, args.timing_reps, log=False)
  out = {n: {**_common.summary([t / TIMING_WINDOW for t in ts])}
         for n, ts in times.items()}
  base = out[BASELINE]["median_ms"] if BASELINE in out else math.nan
  for v in out.values():
    v["ratio_to_muon"] = v["median_ms"] / base
  return out


# --------------------------------------------------------------- report ----


def crossing(history, target) -> float | None:
  """The first step at which the evaluated loss reaches ``target``,
  linearly interpolated between evaluations; ``None`` if it never does."""
  prev = None
  for s, v in history:
    if v is None:
      return None
    if v <= target:
      if prev is None:
        return float(s)
      (s0, v0) = prev
      return s0 + (v0 - target) / (v0 - v) * (s - s0)
    prev = (s, v)
  return None


def timing_path(path: str) -> str:
  return os.path.splitext(path)[0] + "_timing.json"


def summarize(payload: dict) -> dict:
  runs, grid = payload["runs"], payload["grids"]
  seeds = payload["config"]["seeds"]
  table = {}
  base_lr = best_lr(runs, BASELINE, grid.get(BASELINE, ()))
  targets = {}
  if base_lr is not None:
    for s in range(seeds):
      r = runs.get(key(BASELINE, base_lr, s))
      if r:
        targets[s] = r["final_val_loss"]
  timing_info = payload.get("timing", {})
  for name in sorted(grid, key=list(ROWS).index):
    g = grid[name]
    lr = best_lr(runs, name, g)
    if lr is None:
      continue
    per = [runs.get(key(name, lr, s)) for s in range(seeds)]
    per = [r for r in per if r]
    finals = [r["final_val_loss"] for r in per]
    steps = {r["seed"]: crossing(r["eval_history"], targets[r["seed"]])
             for r in per if r["seed"] in targets}
    base_steps = {}
    for s in steps:
      b = runs[key(BASELINE, base_lr, s)]
      base_steps[s] = crossing(b["eval_history"], targets[s])
    ratios = {s: (v / base_steps[s] if v is not None else None)
              for s, v in steps.items()}
    sweep = {f"{r['learning_rate']:g}": r["final_val_loss"]
             for r in runs.values() if r["row"] == name and r["seed"] == 0}
    ok = [f for f in finals if f is not None]
    table[name] = {
        "label": ROWS[name][0], "best_learning_rate": lr,
        "best_at_grid_edge": lr in (min(g), max(g)),
        "sweep_final_val_loss": sweep, "seeds": [r["seed"] for r in per],
        "final_val_loss": finals,
        "final_val_loss_mean": float(np.mean(ok)) if ok else None,
        "final_val_loss_range": [min(ok), max(ok)] if ok else None,
        "steps_to_muon_final": steps, "ratio_to_muon_steps": ratios,
        "train_step_ms_in_runs": float(np.median([r["step_ms"] for r in per])),
        "timing": timing_info.get(name),
    }
  return {"targets": targets, "rows": table}


def fmt(x, spec=".3f"):
  return "—" if x is None else format(x, spec)


def meets_target(r) -> bool | None:
  """Issue 20's target: at most 0.80x Muon's steps on every seed, at most
  1.1x Muon's wall time per step; ``None`` if not measured."""
  ratios = [r["ratio_to_muon_steps"].get(s) for s in r["seeds"]]
  t = (r["timing"] or {}).get("ratio_to_muon")
  if len(ratios) < 2 or t is None:
    return None
  return all(x is not None and x <= 0.80 for x in ratios) and t <= 1.1


def markdown(payload, summary) -> str:
  rows = []
  for r in summary["rows"].values():
    steps = [r["steps_to_muon_final"].get(s) for s in r["seeds"]]
    ratios = [r["ratio_to_muon_steps"].get(s) for s in r["seeds"]]
    lo, hi = r["final_val_loss_range"] or (None, None)
    t = r["timing"] or {}
    edge = (" (edge)" if r["best_at_grid_edge"]
            and len(r["sweep_final_val_loss"]) > 1 else "")
    met = ("(baseline)" if r["label"] == ROWS[BASELINE][0] else
           {True: "yes", False: "no", None: "—"}[meets_target(r)])
    rows.append([
        r["label"], f"{r['best_learning_rate']:g}{edge}", len(r["seeds"]),
        f"{fmt(r['final_val_loss_mean'], '.4f')} ({fmt(lo, '.4f')}–"
        f"{fmt(hi, '.4f')})",
        " / ".join(fmt(s, ".0f") for s in steps),
        " / ".join(fmt(x, ".2f") for x in ratios),
        fmt(t.get("median_ms"), ".1f"), fmt(t.get("ratio_to_muon"), ".2f"),
        met])
  targets = ", ".join(f"seed {s}: {v:.4f}"
                      for s, v in sorted(summary["targets"].items()))
  return _common.table(rows, [
      "optimizer", "lr", "seeds", "final val loss, mean (range)",
      "steps to Muon's final, per seed", "ratio to Muon, per seed",
      "ms/step", "vs Muon", "<= 0.80x steps, <= 1.1x ms"]) + (
          f"\n\nMuon's final validation loss (the target): {targets}.")


def plot(payload, summary, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5))
  for name, r in summary["rows"].items():
    hs = [payload["runs"][key(name, r["best_learning_rate"], s)]
          ["eval_history"] for s in r["seeds"]]
    steps = [s for s, _ in hs[0]]
    vals = np.array([[v if v is not None else np.nan for _, v in h]
                     for h in hs])
    line, = ax.plot(steps, vals.mean(0),
                    label=f"{r['label']} (lr {r['best_learning_rate']:g})")
    if len(hs) > 1:
      ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.2,
                      color=line.get_color())
  for t in set(summary["targets"].values()):
    ax.axhline(t, color="gray", lw=0.5, ls="--")
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats/byte)")
  cfg = payload["config"]
  ax.set_title(f"lm task, GPT 4x{cfg['d_model']}: mean over "
               f"{cfg['seeds']} seeds (band: range)")
  lo = np.nanmin([v for r in payload["runs"].values()
                  for _, v in r["eval_history"] if v is not None])
  ax.set_ylim(lo - 0.05, lo + 1.0)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


def report(payload, path):
  if os.path.exists(timing_path(path)):  # the latest --timing-only
    with open(timing_path(path)) as f:
      payload["timing"] = json.load(f)["timing"]
  summary = summarize(payload)
  payload["summary"] = summary
  save(path, payload)
  print(f"lm task, {payload['config']}; {payload['machine']['cpu']} "
        f"({payload['machine']['cpu_count']} cores), JAX "
        f"{payload['machine']['jax']}")
  print(markdown(payload, summary))
  plot(payload, summary, payload.get("plot") or
       os.path.splitext(path)[0] + ".png")


# ----------------------------------------------------------------- main ----


def main(argv=None):
  args = parse_args(argv)
  path = args.out
  if os.path.exists(path):
    with open(path) as f:
      payload = json.load(f)
  else:
    payload = None
  if args.report:
    if payload is None:
      raise SystemExit(f"{path} does not exist")
    report(payload, path)
    return
  g = grids(args)
  config = {**config_of(args), "seeds": args.seeds}
  if args.timing_only:
    task = make_task(args)
    save(timing_path(path), {
        "machine": _common.machine(), "config": config,
        "command": "python " + " ".join(shlex.quote(a) for a in [
            "benchmarks/steps_to_target.py", *(sys.argv[1:] if argv is None
                                               else argv)]),
        "timing": timing(task, list(g), args)})
    print(f"wrote {timing_path(path)}")
    return
  if payload is not None and {
      k: v for k, v in payload["config"].items() if k != "seeds"} != {
          k: v for k, v in config.items() if k != "seeds"}:
    raise SystemExit(
        f"{path} holds runs of another setup ({payload['config']}); pass "
        "another --out")
  if payload is None:
    payload = {"machine": _common.machine(), "runs": {}}
  payload.pop("command", None)  # an earlier version's single record
  command = "python " + " ".join(shlex.quote(a) for a in [
      "benchmarks/steps_to_target.py", *(sys.argv[1:] if argv is None
                                         else argv)])
  payload.update(config=config, grids={k: list(v) for k, v in g.items()},
                 plot=args.plot)
  # Every invocation that wrote to this file, in order.
  payload.setdefault("commands", []).append(command)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  task = make_task(args)
  print(task.summary, flush=True)

  def do(name, lr, seed):
    k = key(name, lr, seed)
    if k in payload["runs"]:
      return
    t0 = time.time()
    payload["runs"][k] = run_one(task, name, lr, seed, args)
    save(path, payload)
    r = payload["runs"][k]
    print(f"{k}: final val {fmt(r['final_val_loss'], '.4f')}, "
          f"{r['step_ms']:.0f} ms/step, {time.time() - t0:.0f} s",
          flush=True)

  names = list(g)
  whole = names if args.whole_rows is None else names[:args.whole_rows]
  if not args.timing_only:
    # Row by row, in the order of --rows (the baseline first: its final loss
    # is every row's target): the seed-0 sweep, then the best rate at the
    # other seeds, so that a run stopped early leaves whole rows; rows after
    # --whole-rows get seed 0 before any of them gets another seed.
    for name in whole:
      for lr in g[name]:
        do(name, lr, 0)
      for seed in range(1, args.seeds):
        do(name, best_lr(payload["runs"], name, g[name]), seed)
    rest = [n for n in names if n not in whole]
    for name in rest:
      for lr in g[name]:
        do(name, lr, 0)
    for seed in range(1, args.seeds):
      for name in rest:
        do(name, best_lr(payload["runs"], name, g[name]), seed)
  if not args.no_timing and not args.timing_only and "timing" not in payload:
    measured = [n for n in names if any(
        r["row"] == n for r in payload["runs"].values())]
    payload["timing"] = timing(task, measured, args)
    save(path, payload)
  report(payload, path)


if __name__ == "__main__":
  main()
