"""Step time of every optax_muon alias against optax.contrib.muon.

The tree is the GPT-like one of the issue: ``--blocks`` blocks of width
``--width`` (qkv, proj, fc and out kernels go to Muon), plus an embedding and
a head (AdamW). Every candidate is one jitted ``update + apply_updates`` step
in float32 at its defaults, and all are timed round-robin in one process, so
their ratios are comparable even on a busy machine.

Rows:
  optax.adamw              AdamW on every leaf.
  optax.contrib.muon       the baseline: same routing (embedding and head to
                           its internal Adam through its dimension numbers).
  plain NS per leaf        a plain Newton–Schulz (5 quintic steps, standard
                           form) on every Muon leaf, nothing else: what a
                           straightforward implementation costs.
  om.<alias>               each optax_muon alias at its defaults.
  om.mommuon(ns_every=10)  timed over windows of 10 steps (one refresh each),
                           per step.
  matmul f32 N^3           a plain matmul: the machine's matmul rate.

Newton–Schulz GFLOP/s use the standard count, ``4 m^2 n + 2 m^3`` per
iteration with ``m <= n`` (so a cheaper algorithm can beat the matmul rate);
"floor" is that count over the measured matmul rate.

On a GPU or TPU it also times a bfloat16 matmul (float32 accumulation) and
reports Newton–Schulz's share of that rate, since optax_muon's default
``ns_dtype`` there is bfloat16 (optax.contrib.muon and the plain row stay
float32). The same command runs there unchanged.

Usage:
  python benchmarks/step_time.py --out benchmarks/results/step_time.json
  python benchmarks/step_time.py --experiments   # + rows of what did not win

Experiment rows (--experiments) build om.muon with one of its CPU choices
undone, by passing an ``om.Tuning``: "[full products]" (no symmetric block
products), "[batched stacks]" (one batched call per stack instead of a
loop), "[standard form]" (no Gram form), "[batched, standard]" (neither);
and "[no Newton-Schulz]", the same skeleton with the identity as its
direction (what the rest of the step costs).
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_muon as om
from optax_muon import _aliases, _labels, _newton_schulz, _skeleton

BASELINE = "optax.contrib.muon"


def contrib_dimension_numbers(params):
  dn = optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: None if _common.is_adamw_path(p) else dn, params)


def plain_ns(x, steps=5):
  """Textbook Newton–Schulz (quintic, standard form) on one matrix."""
  a, b, c = _newton_schulz.QUINTIC
  if x.shape[0] > x.shape[1]:
    return plain_ns(x.T, steps).T
  x = x / (jnp.linalg.norm(x) + 1e-7)
  for _ in range(steps):
    g = x @ x.T
    x = a * x + (b * g + c * g @ g) @ x
  return x


class _Identity(_skeleton.Direction):
  """The momentum itself as the direction: the skeleton without
  Newton–Schulz."""
  name = "identity"

  def __call__(self, m, states, count, transposed):
    return m, states


def muon_without_newton_schulz():
  """om.muon's routing, momentum, stacking and AdamW, with no Newton–Schulz."""
  return optax.multi_transform(
      {_labels.MUON: optax.chain(_skeleton.scale_by_muon_family(_Identity()),
                                 optax.scale_by_learning_rate(0.02)),
       _labels.ADAMW: _aliases.in_float32(optax.adamw(3e-4, b2=0.95))},
      _labels.resolve_labels(None))


class Stepper:
  """A jitted optimizer step threading its own params and state."""

  def __init__(self, tx, params, grads, steps_per_call=1):
    self.grads, self.params = grads, params
    self.state = tx.init(params)
    self.steps_per_call = steps_per_call

    @jax.jit
    def step(p, s, g):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    self._step = step
    self()  # compile

  def __call__(self):
    for _ in range(self.steps_per_call):
      self.params, self.state = self._step(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))


class Fn:
  def __init__(self, fn, *args):
    self.fn, self.args = jax.jit(fn), args
    jax.block_until_ready(self.fn(*args))

  def __call__(self):
    jax.block_until_ready(self.fn(*self.args))


def build(args, params, grads):
  muon_leaf = lambda p: not _common.is_adamw_path(p)
  c = {}
  c["optax.adamw"] = Stepper(optax.adamw(3e-4), params, grads)
  c[BASELINE] = Stepper(optax.contrib.muon(
      0.02, adam_learning_rate=3e-4,
      muon_weight_dimension_numbers=contrib_dimension_numbers),
      params, grads)
  c["plain NS per leaf"] = Fn(lambda g: jax.tree_util.tree_map_with_path(
      lambda p, x: plain_ns(x) if muon_leaf(p) else x, g), grads)
  c["om.muon"] = Stepper(om.muon(), params, grads)
  c["om.adamuon"] = Stepper(om.adamuon(), params, grads)
  c["om.ogsignmuon"] = Stepper(om.ogsignmuon(), params, grads)
  c["om.normuon"] = Stepper(om.normuon(), params, grads)
  c["om.mommuon"] = Stepper(om.mommuon(ns_every=1), params, grads)  # refresh every step
  c["om.mommuon(ns_every=10)"] = Stepper(
      om.mommuon(ns_every=10), params, grads, steps_per_call=10)
  if args.experiments:
    c["om.muon [no Newton-Schulz]"] = Stepper(
        muon_without_newton_schulz(), params, grads)
    for name, tuning in (
        ("full products", om.Tuning(symmetric_blocks=1)),
        ("batched stacks", om.Tuning(loop_stacks=False)),
        ("standard form", om.Tuning(form="standard")),
        ("batched, standard", om.Tuning(loop_stacks=False, form="standard"))):
      c[f"om.muon [{name}]"] = Stepper(om.muon(tuning=tuning), params, grads)
  n = args.matmul_size
  key = jax.random.PRNGKey(2)
  a32 = jax.random.normal(key, (n, n), jnp.float32)
  c[f"matmul f32 {n}^3"] = Fn(lambda a: a @ a, a32)
  if jax.default_backend() != "cpu":
    c[f"matmul bf16 {n}^3"] = Fn(
        lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32),
        a32.astype(jnp.bfloat16))
  return c


def ns_flops_of_tree(shapes, form_of=lambda m, n: "standard", steps=5):
  return sum(_newton_schulz.ns_flops(fi, fo, steps, form_of(min(fi, fo),
                                                            max(fi, fo)))
             for fi, fo in _common.muon_matrix_shapes(shapes))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--blocks", type=int, default=6)
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--vocab", type=int, default=512)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--matmul-size", type=int, default=0,
                      help="N of the reference N^3 matmul; 0: 1536 on CPU, "
                      "8192 on accelerators")
  parser.add_argument("--experiments", action="store_true",
                      help="add rows for code paths that did not win")
  parser.add_argument("--only", default="",
                      help="comma-separated substrings: keep matching rows "
                      "(the baseline and matmul rows are always kept)")
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  info = _common.machine()
  print(info)
  if not args.matmul_size:
    args.matmul_size = 1536 if jax.default_backend() == "cpu" else 8192
  shapes = _common.gpt_shapes(args.blocks, args.width, args.vocab)
  params = _common.random_tree(shapes, 0)
  grads = _common.random_tree(shapes, 1)
  cands = build(args, params, grads)
  if args.only:
    keep = args.only.split(",")
    cands = {k: v for k, v in cands.items()
             if k == BASELINE or k.startswith("matmul")
             or any(s in k for s in keep)}
  cpu: dict = {}
  times = _common.interleaved(cands, args.reps, cpu_times=cpu)
  # Per optimizer step: windows of several steps are divided out.
  per_step = {k: [t / getattr(cands[k], "steps_per_call", 1) for t in v]
              for k, v in times.items()}
  stats = {k: _common.summary(v) for k, v in per_step.items()}
  for k, v in cpu.items():
    stats[k]["cpu_median_ms"] = float(
        np.median(v) * 1e3 / getattr(cands[k], "steps_per_call", 1))

  std_flops = ns_flops_of_tree(shapes)
  default_ns = om.NewtonSchulz()
  cdtype = default_ns.compute_dtype()
  om_flops = ns_flops_of_tree(shapes, default_ns.form_for)
  n = args.matmul_size
  rates = {k.split()[1]: 2 * n**3 / (stats[k]["median_ms"] / 1e3)
           for k in stats if k.startswith("matmul")}
  rate = rates.get("bf16", rates["f32"]) if cdtype == jnp.bfloat16 else rates[
      "f32"]
  base = stats[BASELINE]["median_ms"]
  cpu_base = stats[BASELINE]["cpu_median_ms"]
  rows = []
  for k, s in stats.items():
    med = s["median_ms"]
    s["ratio_to_baseline"] = med / base
    s["cpu_ratio_to_baseline"] = s["cpu_median_ms"] / cpu_base
    is_ns = not k.startswith(("matmul", "optax.adamw"))
    gfs = std_flops / (med / 1e3) / 1e9 if is_ns else None
    s["ns_gflops_standard_count"] = gfs
    s["share_of_matmul_rate"] = gfs * 1e9 / rate if is_ns else None
    rows.append([
        k, f"{med:.1f}", f"{s['p25_ms']:.0f}-{s['p75_ms']:.0f}",
        f"{med / base:.3f}", f"{s['cpu_median_ms'] / cpu_base:.3f}",
        f"{gfs:.0f}" if is_ns else "",
        f"{gfs * 1e9 / rate:.2f}" if is_ns else ""])
  print()
  print(_common.table(rows, [
      "candidate", "median ms", "p25-p75", f"/ {BASELINE}", "CPU time ratio",
      "NS GFLOP/s (std count)", "x matmul rate"]))
  floor_ms = std_flops / rate * 1e3
  print(f"\nNewton-Schulz work per step: {std_flops / 1e9:.1f} GFLOP standard "
        f"count; {om_flops / 1e9:.1f} GFLOP as om.muon runs it "
        f"(Gram form where cheaper, {jnp.dtype(cdtype).name}).")
  for k, r in rates.items():
    print(f"matmul rate {k}: {r / 1e9:.0f} GFLOP/s")
  print(f"standard Newton-Schulz floor: {floor_ms:.0f} ms "
        f"({floor_ms / base:.3f} x {BASELINE})")
  if "om.muon" in stats:
    print(f"om.muon: {stats['om.muon']['median_ms'] / base:.3f} x {BASELINE} "
          f"(CPU time: {stats['om.muon']['cpu_ratio_to_baseline']:.3f})")
  if "om.mommuon" in stats and "om.mommuon(ns_every=10)" in stats:
    every10 = stats["om.mommuon(ns_every=10)"]["median_ms"]
    print("om.mommuon ns_every=10 / ns_every=1: "
          f"{every10 / stats['om.mommuon']['median_ms']:.3f}")
  _common.write_json(args.out, {
      "benchmark": "step_time", "machine": info, "args": vars(args),
      "ns_gflop_standard_count": std_flops / 1e9,
      "ns_gflop_as_run": om_flops / 1e9, "ns_dtype": jnp.dtype(cdtype).name,
      "matmul_gflops": {k: r / 1e9 for k, r in rates.items()},
      "standard_ns_floor_ms": floor_ms, "baseline": BASELINE,
      "rows": stats, "times_s": times})


if __name__ == "__main__":
  main()
