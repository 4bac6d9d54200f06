"""The singular-value band of ``orthogonalize`` (5 steps) on well-conditioned
input: the numbers quoted in its docstring.

Two measurements per coefficient preset:
  * the scalar map: the 5-step polynomial applied to a normalised singular
    value ``x`` in ``[x_min, 1]`` (float64, exact up to rounding);
  * the library: ``orthogonalize`` on random ``U diag(s) V^T`` stacks with
    condition number ``cond`` (``s`` log-uniform in ``[1/cond, 1]``, both ends
    included), random scale, shapes with ``min(m, n) <= 32``; singular values
    of the output by float64 NumPy SVD, for float32 and bfloat16 compute and
    float32 / bfloat16 / float16 input.

Usage: python benchmarks/ns_band.py [--trials 40] [--out band.json]
"""

from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

import optax_muon as om
from optax_muon import _newton_schulz as ns


def scalar_band(preset: str, x_min: float, steps: int = 5):
  rows, norm_scale = ns.ns_coefficients(preset, steps)
  x = np.linspace(x_min, 1.0, 200_001) / norm_scale
  for a, b, c in rows:
    x = a * x + b * x**3 + c * x**5
  return float(x.min()), float(x.max())


def well_conditioned(rng, batch, m, n, cond, scale):
  k = min(m, n)
  out = np.empty((batch, m, n))
  for i in range(batch):
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.exp(rng.uniform(-np.log(cond), 0.0, k))
    s[0], s[-1] = 1.0, (1.0 / cond if k > 1 else 1.0)
    out[i] = (u * s) @ v.T
  return out * scale


def library_band(rng, preset, in_dtype, ns_dtype, trials, cond):
  lo, hi = np.inf, -np.inf
  for _ in range(trials):
    m, n = (int(v) for v in rng.integers(1, 33, size=2))
    scale = 10.0 ** rng.uniform(-3, 3)
    x = well_conditioned(rng, 2, m, n, cond, scale)
    o = om.orthogonalize(jnp.asarray(x, in_dtype), ns_coeffs=preset,
                         dtype=ns_dtype)
    sv = np.linalg.svd(np.asarray(o, np.float64), compute_uv=False)
    lo, hi = min(lo, float(sv.min())), max(hi, float(sv.max()))
  return lo, hi


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--trials", type=int, default=40)
  parser.add_argument("--cond", type=float, default=10.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  rows = []
  for preset in ("quintic", "polar_express"):
    lo, hi = scalar_band(preset, 0.01)
    rows.append(dict(preset=preset, what="scalar map, x >= 0.01",
                     lo=lo, hi=hi))
    for ns_dtype in (None, "bfloat16"):
      for in_dtype in ("float32", "bfloat16", "float16"):
        lo, hi = library_band(rng, preset, in_dtype, ns_dtype, args.trials,
                              args.cond)
        rows.append(dict(
            preset=preset, what=f"input {in_dtype}, compute "
            f"{ns_dtype or 'default (float32 on CPU)'}", lo=lo, hi=hi))
  print(f"{'preset':14s} {'measurement':48s} {'min sv':>8s} {'max sv':>8s}")
  for r in rows:
    print(f"{r['preset']:14s} {r['what']:48s} {r['lo']:8.4f} {r['hi']:8.4f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(cond=args.cond, trials=args.trials, rows=rows), f,
                indent=1)


if __name__ == "__main__":
  main()
