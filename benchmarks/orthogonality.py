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

Forms: ``standard``, ``gram`` (restarting where ``om.Tuning`` does by
default: after step 3 of 5 in bfloat16/float16, never in float32) and
``gram-norestart`` (the Gram form in one segment, to show what the restarts
buy) and ``gram-restart2`` (restarted after step 2, Dao AI Lab's choice).
Matrices: ``gaussian``, ``ill-conditioned`` and ``rank<k>`` (rank ``k``:
Gaussian factors ``(m, k) @ (k, n)``; ``U V^T`` is then the rank-``k``
polar factor and "sv min" is over its ``k`` nonzero singular values).

Usage:
  python benchmarks/orthogonality.py --out benchmarks/results/orthogonality.json
  # issue 13's accuracy table (bf16 vs float32 HIGHEST, 5 steps):
  python benchmarks/orthogonality.py --shapes 1024x4096,64x64 --steps 5 \
      --forms standard,gram,gram-restart2,gram-norestart \
      --matrices gaussian,rank16 \
      --reps 0 --out benchmarks/results/orthogonality_bf16.json
"""

from __future__ import annotations

import argparse
import itertools

import _common
import jax
import jax.numpy as jnp
import numpy as np

import optax_muon as om

FORMS = {
    "standard": om.Tuning(form="standard"),
    "gram": om.Tuning(form="gram"),
    "gram-norestart": om.Tuning(form="gram", gram_restarts=()),
    # Dao AI Lab's restart point (after step 2), for comparison
    "gram-restart2": om.Tuning(form="gram", gram_restarts=(2,)),
}


def test_matrices(m, n, cond, seed, kinds=("gaussian", "ill-conditioned")):
  rng = np.random.default_rng(seed)
  out = {}
  for kind in kinds:
    if kind == "gaussian":
      out[kind] = rng.standard_normal((m, n))
    elif kind == "ill-conditioned":
      k = min(m, n)
      u, _ = np.linalg.qr(rng.standard_normal((m, k)))
      v, _ = np.linalg.qr(rng.standard_normal((n, k)))
      out[kind] = (u * np.logspace(0, -np.log10(cond), k)) @ v.T
    elif kind.startswith("rank"):
      r = int(kind[4:])
      out[kind] = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    else:
      raise ValueError(f"unknown matrix kind {kind!r}")
  return out


def polar_factor(x):
  """``U V^T`` over the numerically nonzero singular values, and their
  count."""
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  r = int(np.sum(s > s[0] * max(x.shape) * 1e-12))
  return u[:, :r] @ vt[:r], r


def measures(out, polar, ref, rank=None):
  o = np.asarray(out, np.float64)
  if not np.all(np.isfinite(o)):
    return float("nan"), float("nan"), float("nan"), float("nan")
  sv = np.linalg.svd(o, compute_uv=False)[:rank]
  cos = float(np.sum(o * polar) / np.linalg.norm(o) / np.linalg.norm(polar))
  diff = float(np.linalg.norm(o - ref) / np.linalg.norm(ref))
  return float(sv.min()), float(sv.max()), cos, diff


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--shapes", default="",
                      help="comma-separated MxN (e.g. 1024x4096,64x64) "
                      "instead of the GPT-like tree's shapes")
  parser.add_argument("--matrices", default="gaussian,ill-conditioned",
                      help="gaussian, ill-conditioned, rank<k>")
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
  if args.shapes:
    shapes = [tuple(int(v) for v in s.split("x"))
              for s in args.shapes.split(",")]
  else:
    shapes = sorted({(min(s), max(s)) for s in _common.muon_matrix_shapes(
        _common.gpt_shapes(1, args.width))}, key=lambda s: s[1])
  kinds = args.matrices.split(",")
  configs = list(itertools.product(
      args.presets.split(","), [int(s) for s in args.steps.split(",")],
      args.forms.split(","), args.dtypes.split(",")))
  results = []
  for m, n in shapes:
    mats = test_matrices(m, n, args.cond, seed=m + n, kinds=kinds)
    fns = {c: jax.jit(om.NewtonSchulz(
        steps=c[1], coeffs=c[0], dtype=c[3], tuning=FORMS[c[2]]))
        for c in configs}
    inputs = {k: jnp.asarray(x, jnp.float32) for k, x in mats.items()}
    outs = {(c, k): np.asarray(fns[c](x), np.float64)
            for c in configs for k, x in inputs.items()}
    g = inputs[kinds[0]]
    times = _common.interleaved(
        {c: (lambda f=f, g=g: jax.block_until_ready(f(g)))
         for c, f in fns.items()},
        args.reps, log=False) if args.reps else {c: [np.nan] for c in fns}
    for kind, x in mats.items():
      polar, rank = polar_factor(x)
      for c in configs:
        ref = outs[((c[0], c[1], "standard", "float32"), kind)] if (
            (c[0], c[1], "standard", "float32") in fns) else outs[(c, kind)]
        lo, hi, cos, diff = measures(outs[(c, kind)], polar, ref, rank)
        ns = om.NewtonSchulz(steps=c[1], coeffs=c[0], dtype=c[3],
                             tuning=FORMS[c[2]])
        results.append(dict(
            shape=f"{m}x{n}", matrix=kind, preset=c[0], steps=c[1],
            form=c[2], dtype=c[3],
            restarts=list(ns.restarts()) if c[2] != "standard" else [],
            precision=str(ns.matmul_precision()), sv_min=lo, sv_max=hi,
            cos=cos, rel_diff_to_standard_f32=diff,
            median_ms=float(np.median(times[c]) * 1e3)))
    print(f"done {m}x{n}", flush=True)

  rows = [[r["shape"], r["matrix"], r["preset"], r["steps"], r["form"],
           r["dtype"], ",".join(map(str, r["restarts"])) or "-",
           f"{r['sv_min']:.3g}", f"{r['sv_max']:.3g}",
           f"{r['cos']:.4f}", f"{r['rel_diff_to_standard_f32']:.1e}",
           f"{r['median_ms']:.1f}"] for r in results]
  print(_common.table(rows, [
      "shape", "matrix", "preset", "steps", "form", "dtype", "restarts",
      "sv min",
      "sv max", "cos to UV^T", "vs std f32", "ms"]))
  big = max(shapes, key=lambda s: s[0] * s[1])
  x = test_matrices(*big, args.cond, seed=sum(big), kinds=("gaussian",))[
      "gaussian"]
  polar, _ = polar_factor(x)
  default_cos = {}
  # The defaults (quintic, 5 steps, form "auto") in each compute dtype; with
  # gram_in_half=True, bfloat16 runs as on a GPU (the Gram form with its
  # restart wherever it has fewer flops).
  for label, dtype, tuning in (
      ("float32", "float32", None), ("bfloat16", "bfloat16", None),
      ("bfloat16, GPU auto", "bfloat16", om.Tuning(gram_in_half=True))):
    out = jax.jit(om.NewtonSchulz(dtype=dtype, tuning=tuning))(
        jnp.asarray(x, jnp.float32))
    _, _, default_cos[label], _ = measures(out, polar, polar)
    print(f"\ndefault NewtonSchulz ({label}) on a Gaussian "
          f"{big[0]}x{big[1]}: cos to UV^T = {default_cos[label]:.4f}")
  cos = default_cos["float32"]
  _common.write_json(args.out, {
      "benchmark": "orthogonality", "machine": info, "args": vars(args),
      "default_cos_gaussian": {"shape": f"{big[0]}x{big[1]}", "cos": cos,
                               "cos_by_dtype": default_cos},
      "rows": results})


if __name__ == "__main__":
  main()
