"""One process of a multi-process run, started by test_multihost.py.

Several of these processes, each with 2 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2`` set before jax is
imported), join one JAX cluster on the loopback address. Usage::

  python -m tests._multihost_worker COORDINATOR NUM_PROCESSES PROCESS_ID OUT

Each process first runs ``examples/sharded_train.py`` as a user starts it
on each host (``--coordinator`` / ``--num-processes`` / ``--process-id``),
which joins the cluster, trains and prints its losses to stdout; then, in
the same cluster, the optimizer over a mesh of every process's devices.
Each process writes ``OUT/process_{PROCESS_ID}.npz``: for every layout and
step, the whole (gathered) params, named ``{layout}/{step}/{leaf}``.
"""

from __future__ import annotations

import os
import runpy
import sys

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tests import _sharding_worker as sw

DEVICES_PER_PROCESS = 2
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "examples", "sharded_train.py")
# The example at its defaults, 10 steps.
EXAMPLE_ARGS = ("--simulate", str(DEVICES_PER_PROCESS), "--steps", "10")

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


def _gather(trees, mesh):
  """Every leaf of every tree replicated on every device, returned as host
  arrays (one program for the whole list)."""
  replicated = NamedSharding(mesh, P())
  trees = jax.jit(lambda t: t, out_shardings=replicated)(trees)
  return [{k: np.asarray(v.addressable_data(0)) for k, v in tree.items()}
          for tree in trees]


def _on_mesh(tree, mesh):
  """``tree`` with every leaf a global array on ``mesh``: leaves ``init``
  made on the local device only (step counts) become replicated."""
  def put(x):
    if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
      return x
    value = np.asarray(x)
    return jax.make_array_from_callback(
        value.shape, NamedSharding(mesh, P()), lambda index: value[index])
  return jax.tree.map(put, tree)


def run_layout(layout):
  """``sw.STEPS`` steps of ``om.muon`` on the layout's mesh; the gathered
  params after each step.

  The step's outputs are pinned to the layouts its inputs had, as a training
  loop pins them (examples/sharded_train.py), so that every step runs the
  one compiled program; under Auto axes the partitioner would otherwise lay
  out the outputs its own way and the second step would compile again. The
  layouts themselves are checked on one process by test_sharding.py.
  """
  shape, names, axis_type, specs, split = LAYOUTS[layout]
  mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
  with jax.set_mesh(mesh):
    tx = sw._make_tx("muon", ns_mesh_axis=split)
    params = _place(sw._params(), mesh, specs)
    state = _on_mesh(tx.init(params), mesh)
    layouts = jax.tree.map(lambda x: x.sharding, (params, state))
    step = jax.jit(lambda g, s, p: sw._apply(tx, g, s, p),
                   out_shardings=layouts)
    traj = []
    for t in range(sw.STEPS):
      params, state = step(_place(sw._grads(t), mesh, specs), state, params)
      traj.append(params)
    return _gather(traj, mesh)


def run_example(coordinator, num_processes, process_id):
  """``examples/sharded_train.py`` run as ``__main__`` with the command line
  of one host of the cluster; it selects Gloo and calls
  ``jax.distributed.initialize`` itself."""
  argv = sys.argv
  sys.argv = [EXAMPLE, *EXAMPLE_ARGS, "--coordinator", coordinator,
              "--num-processes", num_processes, "--process-id", process_id]
  try:
    runpy.run_path(EXAMPLE, run_name="__main__")
  finally:
    sys.argv = argv
  sys.stdout.flush()


def main(argv):
  coordinator, num_processes, process_id, out = argv
  run_example(coordinator, num_processes, process_id)
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
