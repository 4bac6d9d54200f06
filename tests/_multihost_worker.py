"""One process of a multi-process run, started by test_multihost.py.

Several of these processes, each with 2 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2`` set before jax is
imported), join one JAX cluster on the loopback address and run the
optimizer over a mesh of every process's devices. Usage::

  python -m tests._multihost_worker COORDINATOR NUM_PROCESSES PROCESS_ID OUT

Each process writes ``OUT/process_{PROCESS_ID}.npz``: for every layout and
step, the whole (gathered) params, named ``{layout}/{step}/{leaf}``.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tests import _sharding_worker as sw

DEVICES_PER_PROCESS = 2

# layout -> (mesh shape, axis names, axis type, param specs, ns_mesh_axis).
# Mesh axes span both processes: "d" (4 devices) and "data" (2 devices, one
# per process) cross the process boundary, so do the split's collectives.
LAYOUTS = {
    "fsdp": ((4,), ("d",), AxisType.Explicit, sw.FSDP, None),
    "fsdp_split": ((4,), ("d",), AxisType.Explicit, sw.FSDP, "d"),
    "mixed": ((2, 2), ("data", "model"), AxisType.Auto, sw.MIXED, None),
    "mixed_split": ((2, 2), ("data", "model"), AxisType.Auto, sw.MIXED,
                    ("data", "model")),
}


def _place(tree, mesh, specs):
  """Global arrays from host values that are the same on every process;
  each process fills only its own devices' shards."""
  out = {}
  for k, v in tree.items():
    sharding = NamedSharding(mesh, specs[k])
    out[k] = jax.make_array_from_callback(
        v.shape, sharding, lambda index, v=v: v[index])
  return out


def _gather(tree, mesh):
  """Every leaf replicated on every device, returned as host arrays."""
  replicated = NamedSharding(mesh, P())
  tree = jax.jit(lambda t: t, out_shardings=replicated)(tree)
  return {k: np.asarray(v.addressable_data(0)) for k, v in tree.items()}


def run_layout(layout):
  """``sw.STEPS`` steps of ``om.muon`` on the layout's mesh; the gathered
  params after each step."""
  shape, names, axis_type, specs, split = LAYOUTS[layout]
  mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
  with jax.set_mesh(mesh):
    tx = sw._make_tx("muon", ns_mesh_axis=split)
    traj, _, _ = sw._run(tx, _place(sw._params(), mesh, specs),
                         lambda t: _place(t, mesh, specs))
    return [_gather(p, mesh) for p in traj]


def main(argv):
  coordinator, num_processes, process_id, out = argv
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes=int(num_processes),
                             process_id=int(process_id),
                             initialization_timeout=120)
  want = DEVICES_PER_PROCESS * int(num_processes)
  assert jax.device_count() == want and jax.process_count() == int(
      num_processes), (jax.device_count(), jax.process_count(),
                       os.environ.get("XLA_FLAGS"))
  arrays = {}
  for layout in LAYOUTS:
    for t, params in enumerate(run_layout(layout)):
      for k, v in params.items():
        arrays[f"{layout}/{t}/{k}"] = v
  np.savez(os.path.join(out, f"process_{process_id}.npz"), **arrays)
  jax.distributed.shutdown()
  print(f"process {process_id}: done, {jax.device_count()} devices")


if __name__ == "__main__":
  main(sys.argv[1:])
