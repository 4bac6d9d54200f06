"""Step time of every optax_muon alias against optax.contrib.muon (and,
where PyTorch is installed, a batched PyTorch Muon).

Trees (``--tree``): ``cpu`` (default), the GPT-like one of the first
release: ``--blocks`` blocks of width ``--width`` (qkv, proj, fc and out
kernels go to Muon), plus an embedding and a head (AdamW); ``gpt2-small``
(12 x 768) and ``gpt2-medium`` (24 x 1024): blocks with qkv ``(d, 3d)``,
proj ``(d, d)``, fc ``(d, 4d)``, out ``(4d, d)`` kernels (Muon) plus biases
and LayerNorm scales, ``wte (50304, d)``, ``wpe (1024, d)`` and
``lm_head (d, 50304)`` (AdamW). Every candidate is one jitted
``update + apply_updates`` step in float32 at its defaults, and all are
timed round-robin in one process, so their ratios are comparable even on a
busy machine.

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
  om.muon ns_dtype=f32     om.muon with float32 (Precision.HIGHEST) NS.
  PyTorch Muon per leaf    (only where ``import torch`` works) Keller
                           Jordan's ``muon_update``, written here from the
                           published algorithm (bfloat16 NS5 quintic, lerp
                           momentum with Nesterov, scale
                           ``max(1, rows/cols)**0.5``), eager, one leaf at a
                           time, plus ``torch.optim.AdamW`` on the rest.
  PyTorch Muon batched     the same with same-shape matrices stacked.
  matmul f32 / bf16 N^3    plain matmuls: the machine's matmul rates.

Ratios are to the batched PyTorch row where PyTorch is installed, else to
optax.contrib.muon; the "/ optax.contrib.muon" column is always there.

Newton–Schulz GFLOP/s use the standard count, ``4 m^2 n + 2 m^3`` per
iteration with ``m <= n`` (so a cheaper algorithm can beat the matmul rate);
"floor" is that count over the measured matmul rate.

"NS TFLOP/s" is that count over the step time; "x bf16 matmul" its share
of the bfloat16 matmul rate (float32 accumulation) measured in the same run.

Usage:
  python benchmarks/step_time.py --out benchmarks/results/step_time.json
  python benchmarks/step_time.py --tree gpt2-medium --reps 20 \
      --out benchmarks/results/step_time_gpt2-medium.json   # on a GPU
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
import importlib.util

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_muon as om
from optax_muon import _aliases, _labels, _newton_schulz, _skeleton

BASELINE = "optax.contrib.muon"
TORCH_BATCHED = "PyTorch Muon batched"


def contrib_dimension_numbers(params):
  dn = optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: dn if _common.is_muon_leaf(p, x.shape) else None, params)


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


class TorchMuon:
  """Keller Jordan's Muon (``muon_update``) in PyTorch, from the published
  algorithm, timed eagerly: per leaf, or on same-shape stacks.

  Matrices are kept in PyTorch's ``(fan_out, fan_in)`` layout; the other
  leaves take one ``torch.optim.AdamW`` step (fused on CUDA).
  """

  def __init__(self, params, grads, batched):
    import torch  # noqa: PLC0415 (optional dependency)
    self.torch = torch
    self.cuda = torch.cuda.is_available()
    dev = "cuda" if self.cuda else "cpu"
    to_t = lambda x: torch.from_numpy(np.array(x)).to(dev)
    mats, rest = [], []
    jax.tree_util.tree_map_with_path(
        lambda p, x, g: (mats if _common.is_muon_leaf(p, x.shape) else rest
                         ).append((to_t(x), to_t(g))), params, grads)
    mats = [(w.T.contiguous(), g.T.contiguous()) for w, g in mats]
    if batched:
      groups: dict = {}
      for w, g in mats:
        groups.setdefault(tuple(w.shape), []).append((w, g))
      mats = [(torch.stack([w for w, _ in v]), torch.stack([g for _, g in v]))
              for v in groups.values()]
    self.mats = [(w, g, torch.zeros_like(w)) for w, g in mats]
    self.rest = [w.requires_grad_() for w, _ in rest]
    for w, (_, g) in zip(self.rest, rest):
      w.grad = g
    self.adamw = torch.optim.AdamW(self.rest, lr=3e-4, betas=(0.9, 0.95),
                                   fused=self.cuda)
    self()  # warm up

  def newton_schulz5(self, g, steps=5, eps=1e-7):
    a, b, c = _newton_schulz.QUINTIC
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
      x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
      gram = x @ x.mT
      x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x

  def muon_update(self, grad, momentum, beta=0.95):
    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp(momentum, beta)  # Nesterov
    update = self.newton_schulz5(update)
    return update * max(1, grad.size(-2) / grad.size(-1)) ** 0.5

  def __call__(self):
    with self.torch.no_grad():
      for w, g, mu in self.mats:
        w.add_(self.muon_update(g, mu).to(w.dtype), alpha=-0.02)
      self.adamw.step()
    if self.cuda:
      self.torch.cuda.synchronize()


def build(args, params, grads):
  muon_leaf = lambda p, x: _common.is_muon_leaf(p, x.shape)
  c = {}
  c["optax.adamw"] = Stepper(optax.adamw(3e-4), params, grads)
  c[BASELINE] = Stepper(optax.contrib.muon(
      0.02, adam_learning_rate=3e-4,
      muon_weight_dimension_numbers=contrib_dimension_numbers),
      params, grads)
  c["plain NS per leaf"] = Fn(lambda g: jax.tree_util.tree_map_with_path(
      lambda p, x: plain_ns(x) if muon_leaf(p, x) else x, g), grads)
  c["om.muon"] = Stepper(om.muon(), params, grads)
  c["om.adamuon"] = Stepper(om.adamuon(), params, grads)
  c["om.ogsignmuon"] = Stepper(om.ogsignmuon(), params, grads)
  c["om.normuon"] = Stepper(om.normuon(), params, grads)
  c["om.mommuon"] = Stepper(om.mommuon(ns_every=1), params, grads)  # refresh every step
  c["om.mommuon(ns_every=10)"] = Stepper(
      om.mommuon(ns_every=10), params, grads, steps_per_call=10)
  c["om.muon ns_dtype=f32"] = Stepper(
      om.muon(ns_dtype=jnp.float32), params, grads)
  if importlib.util.find_spec("torch") is not None:
    c["PyTorch Muon per leaf"] = TorchMuon(params, grads, batched=False)
    c[TORCH_BATCHED] = TorchMuon(params, grads, batched=True)
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
  c[f"matmul bf16 {n}^3"] = Fn(
      lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32),
      a32.astype(jnp.bfloat16))
  return c


def ns_flops_of_tree(shapes, ns=None, steps=5):
  """Newton–Schulz flops of the tree's Muon matrices: the standard count,
  or (``ns``: a NewtonSchulz) as ``ns`` runs them (form, restarts)."""
  if ns is None:
    return sum(_newton_schulz.ns_flops(fi, fo, steps)
               for fi, fo in _common.muon_matrix_shapes(shapes))
  return sum(_newton_schulz.ns_flops(
      fi, fo, ns.steps, ns.form_for(min(fi, fo), max(fi, fo)), ns.restarts())
      for fi, fo in _common.muon_matrix_shapes(shapes))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tree", default="cpu", choices=list(_common.TREES),
                      help="cpu: the GPT-like tree of --blocks/--width/"
                      "--vocab; gpt2-small, gpt2-medium: GPT-2-like trees")
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
  builder, kwargs = _common.TREES[args.tree]
  shapes = (builder(**kwargs) if kwargs else
            builder(args.blocks, args.width, args.vocab))
  params = _common.random_tree(shapes, 0)
  grads = _common.random_tree(shapes, 1)
  cands = build(args, params, grads)
  if args.only:
    keep = args.only.split(",")
    cands = {k: v for k, v in cands.items()
             if k in (BASELINE, TORCH_BATCHED) or k.startswith("matmul")
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
  om_flops = ns_flops_of_tree(shapes, default_ns)
  n = args.matmul_size
  rates = {k.split()[1]: 2 * n**3 / (stats[k]["median_ms"] / 1e3)
           for k in stats if k.startswith("matmul")}
  bf16_rate = rates["bf16"]
  ref = TORCH_BATCHED if TORCH_BATCHED in stats else BASELINE
  base = stats[ref]["median_ms"]
  contrib = stats[BASELINE]["median_ms"]
  cpu_contrib = stats[BASELINE]["cpu_median_ms"]
  rows = []
  for k, s in stats.items():
    med = s["median_ms"]
    s["ratio_to_reference"] = med / base
    s["ratio_to_contrib_muon"] = med / contrib
    s["cpu_ratio_to_contrib_muon"] = s["cpu_median_ms"] / cpu_contrib
    is_ns = not k.startswith(("matmul", "optax.adamw"))
    tfs = std_flops / (med / 1e3) / 1e12 if is_ns else None
    s["ns_tflops_standard_count"] = tfs
    s["share_of_bf16_matmul_rate"] = tfs * 1e12 / bf16_rate if is_ns else None
    rows.append([
        k, f"{med:.1f}", f"{s['p25_ms']:.0f}-{s['p75_ms']:.0f}"]
        + ([f"{med / base:.3f}"] if ref != BASELINE else []) + [
        f"{med / contrib:.3f}",
        f"{s['cpu_median_ms'] / cpu_contrib:.3f}",
        f"{tfs:.3g}" if is_ns else "",
        f"{tfs * 1e12 / bf16_rate:.2f}" if is_ns else ""])
  print()
  print(_common.table(rows, [
      "candidate", "median ms", "p25-p75"]
      + ([f"/ {ref}"] if ref != BASELINE else []) + [f"/ {BASELINE}",
      "CPU time / contrib", "NS TFLOP/s (std count)", "x bf16 matmul"]))
  floor_ms = std_flops / bf16_rate * 1e3
  print(f"\ntree {args.tree}: Newton-Schulz work per step "
        f"{std_flops / 1e9:.1f} GFLOP standard count; {om_flops / 1e9:.1f} "
        f"GFLOP as om.muon runs it ({jnp.dtype(cdtype).name}, restarts "
        f"{default_ns.restarts() or 'none'}).")
  for k, r in rates.items():
    print(f"matmul rate {k}: {r / 1e12:.3g} TFLOP/s")
  print(f"standard Newton-Schulz at the bf16 matmul rate: {floor_ms:.1f} ms")
  for k in ("om.muon", "om.muon ns_dtype=f32"):
    if k in stats:
      print(f"{k}: {stats[k]['median_ms'] / base:.3f} x {ref}; "
            f"{stats[k]['ratio_to_contrib_muon']:.3f} x {BASELINE} (CPU "
            f"time: {stats[k]['cpu_ratio_to_contrib_muon']:.3f})")
  if "om.mommuon" in stats and "om.mommuon(ns_every=10)" in stats:
    every10 = stats["om.mommuon(ns_every=10)"]["median_ms"]
    print("om.mommuon ns_every=10 / ns_every=1: "
          f"{every10 / stats['om.mommuon']['median_ms']:.3f}")
  _common.write_json(args.out, {
      "benchmark": "step_time", "machine": info, "args": vars(args),
      "ns_gflop_standard_count": std_flops / 1e9,
      "ns_gflop_as_run": om_flops / 1e9, "ns_dtype": jnp.dtype(cdtype).name,
      "matmul_gflops": {k: r / 1e9 for k, r in rates.items()},
      "standard_ns_at_bf16_rate_ms": floor_ms, "reference": ref,
      "baseline": BASELINE, "rows": stats, "times_s": times})

if __name__ == "__main__":
  main()
