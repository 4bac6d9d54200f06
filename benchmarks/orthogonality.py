"""How orthogonal is Newton–Schulz's output, per preset, step count, form
and dtype -- and what does it cost?

For every Muon shape of the GPT-like tree (in the wide orientation ``m <= n``
that ``orthogonalize`` works in), on a Gaussian matrix and on an
ill-conditioned one (singular values log-spaced from 1 to ``--cond``^-1,
random singular vectors), it reports:

  sv min / sv max   the singular-value range of the result (exact U V^T: 1;
                    nan: the result overflowed)
  cos               the cosine to the exact polar factor ``U V^T`` (from an
                    SVD in float64): ``<O, UV^T> / (||O|| ||UV^T||)``
  vs std f32        ``||O - O_std|| / ||O_std||`` against the standard form
                    in float32 with the same preset and steps
  ms                median time of one jitted call on the Gaussian matrix
                    (all configurations of a shape timed round-robin)

Usage:
  python benchmarks/orthogonality.py --out benchmarks/results/orthogonality.json
"""

from __future__ import annotations

import argparse
import itertools

import _common
import jax
import jax.numpy as jnp
import numpy as np

import optax_muon as om


def test_matrices(m, n, cond, seed):
  rng = np.random.default_rng(seed)
  gauss = rng.standard_normal((m, n))
  k = min(m, n)
  u, _ = np.linalg.qr(rng.standard_normal((m, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  s = np.logspace(0, -np.log10(cond), k)
  return {"gaussian": gauss, "ill-conditioned": (u * s) @ v.T}


def measures(out, polar, ref):
  o = np.asarray(out, np.float64)
  if not np.all(np.isfinite(o)):
    return float("nan"), float("nan"), float("nan"), float("nan")
  sv = np.linalg.svd(o, compute_uv=False)
  cos = float(np.sum(o * polar) / np.linalg.norm(o) / np.linalg.norm(polar))
  diff = float(np.linalg.norm(o - ref) / np.linalg.norm(ref))
  return float(sv.min()), float(sv.max()), cos, diff


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--steps", default="3,4,5,6,8")
  parser.add_argument("--presets", default="quintic,polar_express")
  parser.add_argument("--forms", default="standard,gram")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--cond", type=float, default=1e4)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  info = _common.machine()
  print(info)
  shapes = sorted({(min(s), max(s)) for s in _common.muon_matrix_shapes(
      _common.gpt_shapes(1, args.width))}, key=lambda s: s[1])
  configs = list(itertools.product(
      args.presets.split(","), [int(s) for s in args.steps.split(",")],
      args.forms.split(","), args.dtypes.split(",")))
  results = []
  for m, n in shapes:
    mats = test_matrices(m, n, args.cond, seed=m + n)
    fns = {c: jax.jit(lambda x, c=c: om.orthogonalize(
        x, ns_coeffs=c[0], ns_steps=c[1], form=c[2], dtype=c[3]))
        for c in configs}
    inputs = {k: jnp.asarray(x, jnp.float32) for k, x in mats.items()}
    outs = {(c, k): np.asarray(fns[c](x), np.float64)
            for c in configs for k, x in inputs.items()}
    g = inputs["gaussian"]
    times = _common.interleaved(
        {c: (lambda f=f, g=g: jax.block_until_ready(f(g)))
         for c, f in fns.items()},
        args.reps, log=False)
    for kind, x in mats.items():
      u, _, vt = np.linalg.svd(x, full_matrices=False)
      polar = u @ vt
      for c in configs:
        ref = outs[((c[0], c[1], "standard", "float32"), kind)] if (
            (c[0], c[1], "standard", "float32") in fns) else outs[(c, kind)]
        lo, hi, cos, diff = measures(outs[(c, kind)], polar, ref)
        results.append(dict(
            shape=f"{m}x{n}", matrix=kind, preset=c[0], steps=c[1],
            form=c[2], dtype=c[3], sv_min=lo, sv_max=hi, cos=cos,
            rel_diff_to_standard_f32=diff,
            median_ms=float(np.median(times[c]) * 1e3)))
    print(f"done {m}x{n}", flush=True)

  rows = [[r["shape"], r["matrix"], r["preset"], r["steps"], r["form"],
           r["dtype"], f"{r['sv_min']:.3g}", f"{r['sv_max']:.3g}",
           f"{r['cos']:.4f}", f"{r['rel_diff_to_standard_f32']:.1e}",
           f"{r['median_ms']:.1f}"] for r in results]
  print(_common.table(rows, [
      "shape", "matrix", "preset", "steps", "form", "dtype", "sv min",
      "sv max", "cos to UV^T", "vs std f32", "ms"]))
  default = jax.jit(om.orthogonalize)
  big = max(shapes, key=lambda s: s[1])
  x = test_matrices(*big, args.cond, seed=sum(big))["gaussian"]
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  _, _, cos, _ = measures(default(jnp.asarray(x, jnp.float32)), u @ vt, u @ vt)
  print(f"\ndefault om.orthogonalize on a Gaussian {big[0]}x{big[1]}: "
        f"cos to UV^T = {cos:.4f}")
  _common.write_json(args.out, {
      "benchmark": "orthogonality", "machine": info, "args": vars(args),
      "default_cos_gaussian": {"shape": f"{big[0]}x{big[1]}", "cos": cos},
      "rows": results})


if __name__ == "__main__":
  main()
