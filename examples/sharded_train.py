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

Data: the pydoc topics that ship with Python, as bytes. Every process draws
the same global batch from ``--seed`` and feeds its own rows, so the data do
not depend on the number of processes or devices.

Crash-safe runs: ``--checkpoint-dir DIR`` saves the model, the optimizer
state, the step and the data generator's state every ``--checkpoint-every``
steps (orbax, atomic, the last ``--checkpoint-keep`` kept); after a crash or
a preemption the same command with ``--resume`` continues from the latest
checkpoint, on the CPU bit-identically to a run that was never stopped. It
may resume on another number of devices or processes, with or without
``--no-split``: each array is read straight into its layout on the new mesh
(README, "Checkpointing")::

  python examples/sharded_train.py --simulate 8 --checkpoint-dir ckpt
  # killed at step 45: resume from step 40, now on 4 devices
  python examples/sharded_train.py --simulate 4 --checkpoint-dir ckpt --resume
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
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds the initial weights and the batches")
  parser.add_argument("--checkpoint-dir", default=None,
                      help="save checkpoints here (orbax); with --resume, "
                           "continue from the latest one")
  parser.add_argument("--checkpoint-every", type=int, default=20,
                      help="steps between checkpoints (default 20)")
  parser.add_argument("--checkpoint-keep", type=int, default=3,
                      help="how many of the latest checkpoints to keep")
  parser.add_argument("--resume", action="store_true",
                      help="continue from the latest checkpoint in "
                           "--checkpoint-dir (start at step 0 if none)")
  args = parser.parse_args()
  if args.resume and args.checkpoint_dir is None:
    parser.error("--resume needs --checkpoint-dir.")
  for flag in ("checkpoint_every", "checkpoint_keep"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must "
                   "be at least 1.")
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
from examples.checkpoints import (  # noqa: E402
    Checkpoints,
    generator_state,
    set_generator_state,
)
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


def _key(entry) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def first_moment(optimizer, keys) -> tuple[str, jax.Array]:
  """``(label, array)``: the first moment of the param at path ``keys``
  (e.g. ``("blocks", 0, "mlp", "fc", "kernel")``) -- Muon's momentum or
  AdamW's ``mu``, whichever part of the optimizer the param went to (in the
  other part its entry is an empty ``MaskedNode``)."""
  want = [str(k) for k in keys]
  for path, leaf in jax.tree_util.tree_leaves_with_path(
      nnx.state(optimizer)):
    names = [_key(e) for e in path]
    if names and names[-1] == "value":
      names = names[:-1]
    if "mu" in names:
      i = names.index("mu")
      if names[i + 1:] == want:
        label = (names[names.index("inner_states") + 1]
                 if "inner_states" in names else "?")
        return label, leaf
  raise KeyError(f"no first moment for {'/'.join(want)}")


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
  if args.resume and args.checkpoint_dir is None:
    raise ValueError("--resume needs --checkpoint-dir.")
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
    abstract = nnx.eval_shape(lambda: GPT(config, nnx.Rngs(args.seed)))
    param_specs = jax.tree.map(lambda x: fsdp_spec(x.shape, "data", n),
                               nnx.state(abstract))

    @nnx.jit
    def create():
      model = GPT(config, nnx.Rngs(args.seed))
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
    # One generator for the global batch, the same on every process: each
    # process feeds its own rows of it.
    rng = np.random.default_rng(args.seed)
    local = args.batch_size // jax.process_count()
    rows = slice(jax.process_index() * local,
                 (jax.process_index() + 1) * local)
    batch_sharding = NamedSharding(mesh, P("data"))

    checkpoints, first = None, 1
    if args.checkpoint_dir is not None:
      # What must match for a resume to be the same run (--steps may grow:
      # the learning rate is constant; the devices and --no-split may
      # change: they change rounding only).
      checkpoints = Checkpoints(
          args.checkpoint_dir, every=args.checkpoint_every,
          keep=args.checkpoint_keep, resume=args.resume, config={
              "optimizer": args.optimizer, "batch_size": args.batch_size,
              "d_model": args.d_model, "layers": args.layers,
              "seq_len": args.seq_len, "seed": args.seed})
      # The abstract target: shapes, dtypes and the shardings of this
      # mesh, from the freshly built model and optimizer.
      restored = checkpoints.restore(nnx.state((model, optimizer)))
      if restored is not None:
        done, state, record = restored
        nnx.update((model, optimizer), state)
        set_generator_state(rng, record["rng"])
        first = done + 1
        print(f"resumed from step {done} ({checkpoints.directory})")
      elif args.resume:
        print(f"no checkpoint in {checkpoints.directory}: starting at step 0")

    kernel = model.blocks[0].mlp.fc.kernel
    print(f"{n} devices ({jax.devices()[0].device_kind}), "
          f"{jax.process_count()} process(es); {args.optimizer}, "
          f"ns_mesh_axis={None if args.no_split else 'data'}")
    print(f"blocks[0].mlp.fc.kernel {kernel.shape}: {spec_of(kernel)}")
    start = time.perf_counter()
    loss = None
    for step in range(first, args.steps + 1):
      starts = rng.integers(len(tokens) - args.seq_len - 1,
                            size=args.batch_size)[rows]
      windows = np.stack([tokens[s:s + args.seq_len + 1] for s in starts])
      # Each process gives its own rows; together they form the global batch.
      batch = jax.make_array_from_process_local_data(batch_sharding, windows)
      loss = train_step(model, optimizer, batch)
      if step == first or step % 10 == 0 or step == args.steps:
        print(f"step {step:4d}  loss {float(loss):.4f}  "
              f"({time.perf_counter() - start:.1f} s)")
      if checkpoints is not None and (
          step % args.checkpoint_every == 0 or step == args.steps):
        checkpoints.save(step, nnx.state((model, optimizer)),
                         {"rng": generator_state(rng), "loss": float(loss)},
                         force=True)
    if checkpoints is not None:
      checkpoints.close()
    if loss is not None:
      # Every digit, for comparing runs (a resumed run with an uninterrupted
      # one).
      print(f"final loss {float(loss)!r} at step {args.steps}")
    label, mu = first_moment(optimizer, ("blocks", 0, "mlp", "fc", "kernel"))
    print("after training: blocks[0].mlp.fc.kernel",
          spec_of(model.blocks[0].mlp.fc.kernel), f"({label}), its momentum",
          spec_of(mu))


if __name__ == "__main__":
  try:
    main(ARGS)
  except ValueError as e:  # a bad argument or a checkpoint of another run
    raise SystemExit(f"sharded_train.py: error: {e}") from None
