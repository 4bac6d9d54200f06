"""Why OGSignMuon trails Muon: per-matrix statistics of the two updates.

Trains a task's model (``examples/compare.py``'s tasks, same seed, batches and
schedule) with one optimizer and, at every logged step, rebuilds from the
gradient the Nesterov momentum ``M`` that Muon sees (``beta = 0.95``) for each
hidden matrix and compares three directions of the same ``M``::

  O  = orthogonalize(M)                 (Muon)
  U  = |O| * sign(M)                    (OGSignMuon)
  Us = U * ||O||_2 / ||U||_2            (OGSignMuon, spectral rescale)

For each it prints the spectral norm ``||.||_2``, the Frobenius norm, the
stable rank ``||.||_F^2 / ||.||_2^2``, the cosine with the gradient ``G`` and
with ``M``, and ``<M, .> / ||.||_2``: the first-order decrease per unit of
spectral norm (Muon's ``O`` maximises it: it equals ``||M||_*``, the nuclear
norm; Bernstein & Newhouse, "Old optimizer, new norm", 2024,
https://arxiv.org/abs/2409.20325). Means over the hidden matrices, per step::

  PYTHONPATH=. python examples/studies/ogsign_diagnostics.py --task lm \\
      --optimizer ogsignmuon --steps 60 --every 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import optax_muon as om  # noqa: E402
from examples import optimizers as opt_registry  # noqa: E402
from examples import studies, tasks, training  # noqa: E402

BETA = 0.95


def _stats(u, g, m):
  """The statistics of direction ``u`` against gradient ``g``, momentum ``m``
  (2-D, float32)."""
  s = jnp.linalg.norm(u, ord=2)
  f = jnp.linalg.norm(u)
  cos = lambda a, b: jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
  return {"spec": s, "frob": f, "srank": (f / s) ** 2, "cos_g": cos(u, g),
          "cos_m": cos(u, m), "descent_per_spec": jnp.sum(m * u) / s}


@jax.jit
def _directions(g, m):
  o = om.orthogonalize(m, ns_steps=5, ns_coeffs="quintic", dtype=jnp.float32)
  u = jnp.abs(o) * jnp.sign(m)
  us = u * jnp.linalg.norm(o, ord=2) / jnp.linalg.norm(u, ord=2)
  out = {name: _stats(d, g, m) for name, d in
         (("muon", o), ("ogsign", u), ("ogsign_spec", us))}
  out["nuclear_m"] = jnp.linalg.norm(m, ord="nuc")
  out["cos_ogsign_muon"] = jnp.sum(u * o) / (jnp.linalg.norm(u)
                                             * jnp.linalg.norm(o))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", default="lm", choices=tasks.TASKS)
  p.add_argument("--optimizer", default="ogsignmuon")
  p.add_argument("--lr", type=float, default=None)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--every", type=int, default=10)
  p.add_argument("--schedule-steps", type=int, default=None,
                 help="steps of the lr schedule (default: the task's)")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)

  studies.load()  # --optimizer may name a study's optimizer
  module = tasks.get(args.task)
  task = module.make_task()
  lr = args.lr or opt_registry.default_lr(args.optimizer, task.learning_rates)
  tx = opt_registry.build(args.optimizer, lr, opt_registry.options_for(
      args.optimizer), adamw_learning_rate=task.learning_rates["adamw"])
  model = task.make_model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, training.with_schedule(
      tx, args.schedule_steps or task.default_steps, task.warmup,
      task.cooldown), wrt=nnx.Param)
  batches = task.batches(np.random.default_rng(0))

  @nnx.jit
  def step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(task.loss)(model, batch)
    optimizer.update(model, grads)
    return loss, grads

  labels = None
  buf = None
  rows = []
  print(f"{args.task}, trained with {args.optimizer} lr={lr:g}; means over "
        "hidden matrices")
  print("step  loss    | dir         spec    frob   srank  cos_g  cos_m "
        " descent/spec (/||M||_*)")
  for t in range(1, args.steps + 1):
    loss, grads = step(model, optimizer, next(batches))
    flat = [(jax.tree_util.keystr(k), np.asarray(v, np.float32))
            for k, v in jax.tree_util.tree_leaves_with_path(grads)]
    if labels is None:
      lab = om.muon_labels(grads)
      labels = [v for v in jax.tree_util.tree_leaves(lab)]
      buf = {k: np.zeros_like(v) for (k, v), lb in zip(flat, labels)
             if lb == "muon"}
    mats = {}
    for (k, g), lb in zip(flat, labels):
      if lb != "muon":
        continue
      g2 = g.reshape(-1, g.shape[-1])
      buf[k] = BETA * buf[k] + (1 - BETA) * g
      m = ((1 - BETA) * g + BETA * buf[k]).reshape(g2.shape)
      if np.any(m):  # a zero momentum (e.g. a zero-initialised layer's
        mats[k] = (g2, m)  # first steps) has no direction to compare
    if t % args.every and t != 1:
      continue
    per = {k: jax.device_get(_directions(jnp.asarray(g), jnp.asarray(m)))
           for k, (g, m) in mats.items()}
    row = {"step": t, "loss": float(loss), "leaves": {
        k: {d: ({s: float(x) for s, x in v.items()} if isinstance(v, dict)
                else float(v)) for d, v in st.items()}
        for k, st in per.items()}}
    rows.append(row)
    for d in ("muon", "ogsign", "ogsign_spec"):
      mean = {s: np.mean([st[d][s] for st in per.values()])
              for s in per[next(iter(per))][d]}
      rel = np.mean([st[d]["descent_per_spec"] / st["nuclear_m"]
                     for st in per.values()])
      print(f"{t:4d}  {float(loss):.4f}  | {d:<11s} {mean['spec']:6.3f} "
            f"{mean['frob']:6.2f} {mean['srank']:6.1f} {mean['cos_g']:6.3f} "
            f"{mean['cos_m']:6.3f}  {rel:.3f}")
    print(f"      cos(ogsign, muon) = "
          f"{np.mean([st['cos_ogsign_muon'] for st in per.values()]):.3f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"task": args.task, "optimizer": args.optimizer, "lr": lr,
                 "rows": rows}, f)


if __name__ == "__main__":
  main()
