r"""Data-parallel GPT training with FSDP params and the split Newton–Schulz.

One mesh axis, ``"data"``, over every device: each batch is split over it
(data parallelism), every param and its optimizer state is sharded over it
along one axis (FSDP), and Muon's orthogonalisations are split over it
(``ns_mesh_axis="data"``): each device orthogonalises ``1/n`` of the stacked
matrices and the results are sent back to each param's shards. JAX's SPMD
partitioner inserts every collective.

Run it on 8 simulated CPU devices, or unchanged on every GPU of a host::

  python examples/sharded_train.py --simulate 8
  python examples/sharded_train.py

Across hosts, start the same command on every host with ``--multihost``.
Under SLURM, Open MPI or on Cloud TPU, ``jax.distributed.initialize()``
finds the coordinator, the number of processes and this process's id by
itself; anywhere else, give them::

  # host 0 runs the coordinator; host 1 connects to it
  python examples/sharded_train.py --coordinator host0:1234 \
      --num-processes 2 --process-id 0
  python examples/sharded_train.py --coordinator host0:1234 \
      --num-processes 2 --process-id 1

(``--coordinator`` may also come from ``JAX_COORDINATOR_ADDRESS``; the
number of processes and the id have no environment variable.) Each host then
feeds its own slice of every batch. Two processes on one machine, 2
simulated CPU devices each (CPU collectives over Gloo)::

  python examples/sharded_train.py --simulate 2 --coordinator 127.0.0.1:1234 \
      --num-processes 2 --process-id 0 &
  python examples/sharded_train.py --simulate 2 --coordinator 127.0.0.1:1234 \
      --num-processes 2 --process-id 1

Data: the pydoc topics that ship with Python, as bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--simulate", type=int, default=0,
                      help="run on this many simulated CPU devices")
  parser.add_argument("--multihost", action="store_true",
                      help="call jax.distributed.initialize() first, which "
                           "detects SLURM, Open MPI and Cloud TPU clusters")
  parser.add_argument("--coordinator", metavar="HOST:PORT",
                      help="address of process 0's coordinator service "
                           "(implies --multihost)")
  parser.add_argument("--num-processes", type=int,
                      help="number of processes (implies --multihost)")
  parser.add_argument("--process-id", type=int,
                      help="this process's id, 0 to --num-processes - 1 "
                           "(implies --multihost)")
  parser.add_argument("--optimizer", default="muon",
                      choices=["muon", "adamuon", "mommuon", "ogsignmuon",
                               "normuon"])
  parser.add_argument("--no-split", action="store_true",
                      help="leave ns_mesh_axis unset (every device "
                           "orthogonalises every matrix)")
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--batch-size", type=int, default=32,
                      help="global batch size (a multiple of the devices)")
  parser.add_argument("--d-model", type=int, default=64)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--seq-len", type=int, default=64)
  args = parser.parse_args()
  if (args.coordinator is not None or args.num_processes is not None
      or args.process_id is not None):
    args.multihost = True
  if args.num_processes is not None and args.num_processes < 1:
    parser.error(f"--num-processes {args.num_processes}: must be at least 1.")
  if args.process_id is not None and (
      args.process_id < 0 or (args.num_processes is not None
                              and args.process_id >= args.num_processes)):
    parser.error(f"--process-id {args.process_id}: must be in "
                 f"[0, --num-processes).")
  return args


ARGS = _parse_args()
if ARGS.simulate:
  # Must happen before jax is imported.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={ARGS.simulate}")
  os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import optax_muon as om  # noqa: E402

# The model is the lm example's GPT (examples/tasks/lm.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from examples.tasks.lm import GPT, GPTConfig, loss_fn  # noqa: E402

# --------------------------------------------------------------- sharding ----


def fsdp_spec(shape, axis: str, size: int) -> P:
  """FSDP: shard the largest axis that ``size`` divides, else replicate."""
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % size == 0 and shape[d] >= size:
      return P(*[axis if i == d else None for i in range(len(shape))])
  return P()


def pin(module, specs):
  """Constrains a module's state to ``specs`` (inside jit, so that the
  step's outputs keep their layout from step to step)."""
  nnx.update(module, jax.lax.with_sharding_constraint(nnx.state(module), specs))


def spec_of(v) -> str:
  """The partition spec of an ``nnx.Variable``'s array, as ``P(...)`` on
  every JAX version."""
  array = v[...] if isinstance(v, nnx.Variable) else v
  return "P(" + ", ".join(map(repr, array.sharding.spec)) + ")"


def text_bytes() -> np.ndarray:
  from pydoc_data import topics
  text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
  return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def main(args):
  if args.multihost:
    if args.simulate:
      # The CPU backend's collectives across processes.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Unset arguments are detected from the cluster (SLURM, Open MPI, Cloud
    # TPU); the coordinator also from JAX_COORDINATOR_ADDRESS.
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
  n = jax.device_count()
  if args.batch_size % n:
    raise ValueError(f"--batch-size {args.batch_size} is not a multiple of "
                     f"the {n} devices.")
  # Auto axes: the partitioner places intermediates (FSDP's all-gathers of
  # the weights in the forward pass); the params' layouts are fixed below.
  mesh = jax.make_mesh((n,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  config = GPTConfig(seq_len=args.seq_len, d_model=args.d_model,
                     n_layers=args.layers)
  alias = getattr(om, args.optimizer)
  tx = alias(0.02, adamw_learning_rate=3e-3,
             ns_mesh_axis=None if args.no_split else "data")

  with jax.set_mesh(mesh):
    # Build the model directly sharded: shapes first, then create it under
    # jit with every param constrained to its FSDP spec (no host copy of the
    # whole model, which matters across hosts).
    abstract = nnx.eval_shape(lambda: GPT(config, nnx.Rngs(0)))
    param_specs = jax.tree.map(lambda x: fsdp_spec(x.shape, "data", n),
                               nnx.state(abstract))

    @nnx.jit
    def create():
      model = GPT(config, nnx.Rngs(0))
      pin(model, param_specs)
      return model

    model = create()
    # init runs eagerly on the sharded params: the momentum (and AdamW's
    # moments) are created with each param's sharding.
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    opt_specs = jax.tree.map(lambda x: x.sharding.spec, nnx.state(optimizer))

    @nnx.jit
    def train_step(model, optimizer, batch):
      loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
      optimizer.update(model, grads)
      pin(model, param_specs)
      pin(optimizer, opt_specs)
      return loss

    tokens = text_bytes()
    rng = np.random.default_rng(jax.process_index())
    local = args.batch_size // jax.process_count()
    batch_sharding = NamedSharding(mesh, P("data"))
    kernel = model.blocks[0].mlp.fc.kernel
    print(f"{n} devices ({jax.devices()[0].device_kind}), "
          f"{jax.process_count()} process(es); {args.optimizer}, "
          f"ns_mesh_axis={None if args.no_split else 'data'}")
    print(f"blocks[0].mlp.fc.kernel {kernel.shape}: {spec_of(kernel)}")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
      starts = rng.integers(len(tokens) - args.seq_len - 1, size=local)
      windows = np.stack([tokens[s:s + args.seq_len + 1] for s in starts])
      # Each process gives its own rows; together they form the global batch.
      batch = jax.make_array_from_process_local_data(batch_sharding, windows)
      loss = train_step(model, optimizer, batch)
      if step == 1 or step % 10 == 0 or step == args.steps:
        print(f"step {step:4d}  loss {float(loss):.4f}  "
              f"({time.perf_counter() - start:.1f} s)")
    mu = optimizer.opt_state.inner_states["muon"].inner_state[0].mu
    print("after training: blocks[0].mlp.fc.kernel",
          spec_of(model.blocks[0].mlp.fc.kernel), "its momentum",
          spec_of(mu["blocks"][0]["mlp"]["fc"]["kernel"]))


if __name__ == "__main__":
  main(ARGS)
