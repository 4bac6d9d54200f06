"""Ways to run Newton–Schulz on the GPT-like tree's stacks, timed
round-robin in one process: what the library does and what it tried.

The Muon matrices of the tree, in the wide orientation, grouped by shape the
way the skeleton stacks them (``(blocks, 384, 1152)`` qkv, ``(blocks, 384,
384)`` proj, ``(2 blocks, 384, 1536)`` fc and transposed out) are
orthogonalised by each candidate (5 quintic steps, float32):

  batched, standard          one batched call per stack, standard form
  batched, gram              one batched call per stack, the library's
                             orthogonalize (Gram form where cheaper)
  loop, standard             lax.map over each stack's matrices, standard
  loop, gram, full products  lax.map, Gram form with plain m x m matmuls
                             (X normalised first)
  loop, gram [library]       what om.muon does on CPU: lax.map, Gram form
                             where cheaper, its m x m products (all
                             symmetric) computed as 4 x 4 block upper
                             triangles and mirrored (5/8 of the flops),
                             the norm taken from the Gram matrix's trace
  unrolled, gram             a Python loop over the matrices instead of
                             lax.map (XLA may interleave them)
  loop, gram, sym-k          k x k blocks instead of 4: (k + 1) / (2 k) of
                             the flops, smaller matmuls (X normalised first)
  ... + sym XX^T             the first Gram matrix X X^T by blocks too
  ... X normalised           X divided by its norm before the iteration
                             (passes over X), where the library normalises
                             through the Gram matrix (``||X||_F^2 =
                             trace(X X^T)``)
  loop, gram, full, merged   ``P @ [Q | A]`` as one matmul instead of two

Every candidate's result is checked against the library's before timing.

Usage:
  python benchmarks/ns_variants.py --out benchmarks/results/ns_variants.json
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import numpy as np

from optax_muon import _newton_schulz as ns

ROWS, _ = ns.ns_coefficients("quintic", 5)
mm = lambda a, b: ns._matmul(a, b, jax.lax.Precision.HIGHEST)


def sym_blocks(k):
  """``a @ b`` for a known-symmetric product, by ``k`` block rows (the
  library's ``_symmetric_matmul``)."""
  return lambda a, b: ns._symmetric_matmul(
      a, b, blocks=k, precision=jax.lax.Precision.HIGHEST)


def gram_iteration(x, product=mm, merged=False, sym_start=False):
  """The Gram form (as in the library), with a pluggable m x m product."""
  m = x.shape[-2]
  eye = jnp.eye(m, dtype=x.dtype)
  gram = (product if sym_start else mm)(x, jnp.swapaxes(x, -1, -2))
  q = None
  for k, (a, b, c) in enumerate(ROWS):
    poly = a * eye + b * gram + c * product(gram, gram)
    last = k + 1 == len(ROWS)
    if q is None:
      q = poly
      if not last:
        gram = product(product(poly, gram), poly)
    elif merged and not last:
      both = product(poly, jnp.concatenate([q, gram], axis=-1)) if (
          product is mm) else None
      q, gram = both[..., :m], mm(both[..., m:], poly)
    else:
      q = product(poly, q)
      if not last:
        gram = product(product(poly, gram), poly)
  return q, x


def orth_one(x, form="auto", product=mm, merged=False, trace_norm=False,
             sym_start=False):
  """One wide matrix (or a batch): the library's pipeline, with options."""
  m, n = x.shape[-2:]
  use_gram = (form == "gram" or form == "auto" and ns.NewtonSchulz(
      steps=len(ROWS), dtype=jnp.float32).form_for(m, n) == "gram")
  if not use_gram:
    return ns.orthogonalize(x, form="standard", dtype=jnp.float32)
  if trace_norm:
    amax = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
    xs = x / jnp.where(amax > 0, amax, 1.0)
    gram = mm(xs, jnp.swapaxes(xs, -1, -2))
    norm = jnp.sqrt(jnp.trace(gram, axis1=-2, axis2=-1))[..., None, None]
    d = norm + 1e-7
    q, _ = gram_iteration_from(gram / (d * d), product)
    return mm(q / d, xs)
  xn = ns.normalize_frobenius(x, 1e-7)
  q, x0 = gram_iteration(xn, product, merged, sym_start)
  return mm(q, x0)


def gram_iteration_from(gram, product):
  m = gram.shape[-1]
  eye = jnp.eye(m, dtype=gram.dtype)
  q = None
  for k, (a, b, c) in enumerate(ROWS):
    poly = a * eye + b * gram + c * product(gram, gram)
    last = k + 1 == len(ROWS)
    q = poly if q is None else product(poly, q)
    if not last:
      gram = product(product(poly, gram), poly)
  return q, None


def candidates():
  lib = lambda x: ns.orthogonalize(x, dtype=jnp.float32)
  std = lambda x: ns.orthogonalize(x, dtype=jnp.float32, form="standard")
  loop = lambda f: lambda x: jax.lax.map(f, x)
  unroll = lambda f: lambda x: jnp.stack([f(x[i]) for i in range(len(x))])
  sym = lambda k, **kw: loop(lambda x: orth_one(x, product=sym_blocks(k), **kw))
  return {
      "batched, standard": std,
      "batched, gram": lib,
      "loop, standard": loop(std),
      "loop, gram, full products": loop(lambda x: orth_one(x)),
      "loop, gram [library]": loop(lib),
      "unrolled, gram": unroll(lib),
      "loop, gram, sym-2": sym(2),
      "loop, gram, sym-3": sym(3),
      "loop, gram, sym-6": sym(6),
      "loop, gram, sym-8": sym(8),
      "loop, gram, sym-4 + sym XX^T": sym(4, sym_start=True),
      "loop, gram, sym-4, X normalised": sym(4),
      "loop, gram, full, merged": loop(lambda x: orth_one(x, merged=True)),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--blocks", type=int, default=6)
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--matmul-size", type=int, default=1536)
  parser.add_argument("--only", default="",
                      help="comma-separated substrings of candidates to keep "
                      "(besides batched standard, the library and matmul)")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  info = _common.machine()
  print(info)

  shapes = _common.muon_matrix_shapes(
      _common.gpt_shapes(args.blocks, args.width))
  groups: dict = {}
  for s in shapes:
    groups.setdefault((min(s), max(s)), 0)
    groups[(min(s), max(s))] += 1
  key = jax.random.PRNGKey(0)
  stacks = [jax.random.normal(jax.random.fold_in(key, i), (k,) + s)
            for i, (s, k) in enumerate(groups.items())]
  want = [np.asarray(ns.orthogonalize(s, dtype=jnp.float32)) for s in stacks]

  fns = {}
  for name, f in candidates().items():
    fn = jax.jit(lambda xs, f=f: [f(x) for x in xs])
    got = fn(stacks)
    err = max(float(np.max(np.abs(np.asarray(g) - w))) for g, w in zip(got, want))
    assert err < 1e-4, (name, err)
    fns[name] = lambda fn=fn: jax.block_until_ready(fn(stacks))
  n = args.matmul_size
  a = jax.random.normal(key, (n, n))
  matmul = jax.jit(lambda a: a @ a)
  fns[f"matmul f32 {n}^3"] = lambda: jax.block_until_ready(matmul(a))

  if args.only:
    keep = args.only.split(",")
    fns = {k: v for k, v in fns.items() if k.startswith(
        ("batched, standard", "loop, gram [library]", "matmul"))
        or any(s in k for s in keep)}
  cpu: dict = {}
  times = _common.interleaved(fns, args.reps, cpu_times=cpu)
  stats = {k: _common.summary(v) for k, v in times.items()}
  for k, v in cpu.items():
    stats[k]["cpu_median_ms"] = float(np.median(v) * 1e3)
  base = stats["batched, standard"]["median_ms"]
  lib = stats["loop, gram [library]"]["median_ms"]
  cpu_lib = stats["loop, gram [library]"]["cpu_median_ms"]
  std_flops = sum(k * ns.ns_flops(*s, 5) for s, k in groups.items())
  rate = 2 * n**3 / (stats[f"matmul f32 {n}^3"]["median_ms"] / 1e3)
  rows = []
  for k, s in stats.items():
    med = s["median_ms"]
    s["ratio_to_batched_standard"] = med / base
    s["ratio_to_library"] = med / lib
    rows.append([k, f"{med:.1f}", f"{s['p25_ms']:.0f}-{s['p75_ms']:.0f}",
                 f"{med / base:.3f}", f"{med / lib:.3f}",
                 f"{s['cpu_median_ms'] / cpu_lib:.3f}",
                 "" if k.startswith("matmul") else
                 f"{std_flops / (med / 1e3) / rate:.2f}"])
  print(_common.table(rows, [
      "candidate", "median ms", "p25-p75", "/ batched standard", "/ library",
      "CPU time / library's",
      "std-count GFLOP/s / matmul rate"]))
  print(f"matmul rate {rate / 1e9:.0f} GFLOP/s; standard count "
        f"{std_flops / 1e9:.1f} GFLOP; floor {std_flops / rate * 1e3:.0f} ms")
  _common.write_json(args.out, {
      "benchmark": "ns_variants", "machine": info, "args": vars(args),
      "matmul_gflops": rate / 1e9, "rows": stats, "times_s": times})


if __name__ == "__main__":
  main()
