"""Per-device flops and collectives of the compiled Muon step on a mesh.

For a small transformer-shaped param tree (``--layers`` blocks of attention
``(d, d)`` x4 and MLP ``(d, 4d)``, ``(4d, d)`` kernels, plus norms for
AdamW) it compiles one ``om.muon`` step (update + apply) under several
layouts and reads, from the compiled program:

* per-device flops: ``jit(step).lower(...).compile().cost_analysis()``
  (the SPMD-partitioned program is the per-device one);
* collectives in the compiled HLO text: how many all-gather, all-reduce,
  reduce-scatter, all-to-all and collective-permute ops, and the bytes of
  their results per device.

Layouts: ``replicated`` and ``fsdp`` (each kernel's fan-in sharded over the
devices), each without and with ``ns_mesh_axis`` (``+split``), and
``tp+split`` (Megatron-style column/row-parallel kernels on a
``("data", "model")`` mesh, split over both axes). No wall time: the
simulated CPU devices share the host's cores, so time says nothing about a
real mesh. Flops are reported as a ratio against ``replicated``, measured
in the same run.

Usage (8 simulated CPU devices unless ``--simulate 0``, for real devices)::

  python benchmarks/sharding.py --out benchmarks/results/sharding.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--simulate", type=int, default=8,
                      help="simulated CPU devices (0: use the real devices)")
  parser.add_argument("--d", type=int, default=256, help="model width")
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--out", default="benchmarks/results/sharding.json")
  return parser.parse_args()


ARGS = _parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.simulate:
  # Must happen before jax is imported.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={ARGS.simulate}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import optax_muon as om  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")
_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "s32": 4, "u32": 4,
          "pred": 1, "s8": 1, "u8": 1, "s64": 8, "u64": 8}


def param_shapes(d: int, layers: int) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for i in range(layers):
    for name in ("q", "k", "v", "o"):
      shapes[f"block{i}/attn_{name}"] = (d, d)
    shapes[f"block{i}/mlp_in"] = (d, 4 * d)
    shapes[f"block{i}/mlp_out"] = (4 * d, d)
    shapes[f"block{i}/norm_scale"] = (d,)
  return shapes


def _fsdp_spec(shape, axis):
  return P(axis, *([None] * (len(shape) - 1)))


def _tp_spec(name, shape):
  if len(shape) == 1:
    return P()
  if name.endswith(("attn_o", "mlp_out")):  # row-parallel
    return P("model", None)
  return P(None, "model")  # column-parallel


def layouts(n: int):
  """name -> (mesh shape, axis names, spec fn(name, shape), ns_mesh_axis)."""
  model = 2 if n % 2 == 0 and n > 1 else 1
  return {
      "replicated": ((n,), ("d",), lambda k, s: P(), None),
      "replicated+split": ((n,), ("d",), lambda k, s: P(), "d"),
      "fsdp": ((n,), ("d",), lambda k, s: _fsdp_spec(s, "d"), None),
      "fsdp+split": ((n,), ("d",), lambda k, s: _fsdp_spec(s, "d"), "d"),
      "tp+split": ((n // model, model), ("data", "model"), _tp_spec,
                   ("data", "model")),
  }


def collectives(hlo: str) -> dict[str, dict[str, int]]:
  """Counts and result bytes of each collective in compiled HLO text."""
  out = {c: {"count": 0, "bytes": 0} for c in COLLECTIVES}
  for line in hlo.splitlines():
    for c in COLLECTIVES:
      m = re.search(rf"=\s*(.*?)\s{re.escape(c)}(-start)?\(", line)
      if m:
        out[c]["count"] += 1
        for dtype, dims in re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]",
                                      m.group(1)):
          size = int(np.prod([int(x) for x in dims.split(",") if x]))
          out[c]["bytes"] += size * _BYTES.get(dtype, 4)
        break
  return out


def measure(name, mesh_shape, axis_names, spec_fn, split, shapes):
  mesh = jax.make_mesh(mesh_shape, axis_names,
                       axis_types=(AxisType.Auto,) * len(mesh_shape))
  rng = np.random.default_rng(0)
  params = {k: jax.device_put(rng.standard_normal(s).astype(np.float32),
                              NamedSharding(mesh, spec_fn(k, s)))
            for k, s in shapes.items()}
  tx = om.muon(0.02, ns_mesh_axis=split, mesh=mesh)
  state = tx.init(params)

  def step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step).lower(params, state, params).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"layout": name, "mesh": dict(zip(axis_names, mesh_shape)),
          "ns_mesh_axis": split, "flops_per_device": float(cost["flops"]),
          "collectives": collectives(compiled.as_text())}


def main():
  args = ARGS or _parse_args()
  n = jax.device_count()
  shapes = param_shapes(args.d, args.layers)
  rows = [measure(name, *spec, shapes) for name, spec in layouts(n).items()]
  base = rows[0]["flops_per_device"]
  for r in rows:
    r["flops_vs_replicated"] = r["flops_per_device"] / base
  header = (f"{'layout':18} {'GFLOP/dev':>10} {'vs repl.':>9} "
            + " ".join(f"{c:>20}" for c in COLLECTIVES))
  print(f"{n} x {jax.devices()[0].device_kind}, d={args.d}, "
        f"layers={args.layers}; collectives as count/KiB per device")
  print(header)
  for r in rows:
    cols = " ".join(
        f"{r['collectives'][c]['count']:>9d}/"
        f"{r['collectives'][c]['bytes'] / 1024:>10.0f}" for c in COLLECTIVES)
    print(f"{r['layout']:18} {r['flops_per_device'] / 1e9:>10.3f} "
          f"{r['flops_vs_replicated']:>9.3f} {cols}")
  result = {"devices": n, "device_kind": jax.devices()[0].device_kind,
            "platform": jax.default_backend(), "jax": jax.__version__,
            "d": args.d, "layers": args.layers, "rows": rows}
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
