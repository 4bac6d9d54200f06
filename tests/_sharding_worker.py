"""Checks on a device mesh, run by test_sharding.py in a separate process.

The process must start with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(set before jax is imported) so that the CPU backend has 8 devices. Usage::

  python -m tests._sharding_worker CHECK [CHECK ...]

with each ``CHECK`` one of

  steps:ALIAS              every layout of LAYOUTS (see cmd_steps)
  steps:ALIAS:LAYOUT,...   the named layouts
  flops                    see cmd_flops
  example                  see cmd_example
  resume:ALIAS:CASE,...    see cmd_resume (ALIAS a name of om.ALIASES)

The checks run one after the other in the one process (one start, one
import of jax). The process prints one JSON object on its last line,
``{CHECK: report}``: numbers and descriptions of what went wrong, which the
tests assert on.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import runpy
import sys

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_muon as om
from tests import reference as ref

SHAPES = {
    "rep": (64, 64),
    "fsdp": (64, 64),
    "fsdp_tp": (64, 64),
    "tp_col": (32, 64),
    "tp_row": (64, 32),  # tall: stacks with tp_col unless orientation matters
    "conv": (3, 3, 8, 16),
    "stack": (2, 32, 64),  # two matrices, batch axis 0
    "bias": (64,),  # AdamW
}
STEPS = 2
LR, WD = 0.02, 0.05

# alias name -> (alias, kwargs, reference class, its kwargs, rtol vs reference)
ALIASES = {
    "muon": (om.muon, {}, ref.Muon, {}, 1e-4),
    "adamuon": (om.adamuon, {}, ref.AdaMuon, {}, 1e-4),
    # steps 1 and 2 take both branches of the refresh's lax.cond
    "mommuon_every_2": (om.mommuon, {"ns_every": 2}, ref.MomMuon,
                        {"ns_every": 2}, 1e-3),
    "mommuon_gram": (om.mommuon, {"ns_average": "gram", "ns_every": 2},
                     ref.MomMuon, {"average": "gram", "ns_every": 2}, 1e-3),
    "ogsignmuon": (om.ogsignmuon, {}, ref.OGSignMuon, {}, 1e-4),
    "normuon": (om.normuon, {}, ref.NorMuon, {}, 1e-4),
    # Muon's direction (weight decay added to it), then Hyperball.
    "muonh": (om.muonh, {}, ref.Muon, {}, 1e-4),
}
#: Aliases whose Muon chain ends in om.hyperball instead of the learning rate.
HYPERBALL = frozenset({"muonh"})


def _batch_axes(path, leaf):
  del path
  return (0,) if leaf.ndim == 3 else ()


# On a ("data", "model") mesh: one leaf of each layout, so that one stack
# mixes them. FSDP shards a kernel's fan-in over the devices, tensor
# parallelism (Megatron-style) a kernel's fan-out (column-parallel) or
# fan-in (row-parallel) over "model".
MIXED = {
    "rep": P(),
    "fsdp": P(("data", "model"), None),
    "fsdp_tp": P("data", "model"),
    "tp_col": P(None, "model"),
    "tp_row": P("model", None),
    "conv": P(None, None, "data", "model"),
    "stack": P(None, "data", None),
    "bias": P("model"),
}
# On a ("d",) mesh: every leaf FSDP, its first fan-in axis the size allows.
FSDP = {
    "rep": P("d", None),
    "fsdp": P("d", None),
    "fsdp_tp": P("d", None),
    "tp_col": P("d", None),
    "tp_row": P("d", None),
    "conv": P(None, None, "d", None),
    "stack": P(None, "d", None),
    "bias": P("d"),
}
MIXED_MESH = ((2, 4), ("data", "model"))
FSDP_MESH = ((8,), ("d",))

# layout -> (mesh, axis type, param specs, ns_mesh_axis)
LAYOUTS = {
    "mixed": (MIXED_MESH, AxisType.Auto, MIXED, ("data", "model")),
    "mixed_no_split": (MIXED_MESH, AxisType.Auto, MIXED, None),
    "mixed_explicit_axes": (MIXED_MESH, AxisType.Explicit, MIXED, "model"),
    "fsdp_explicit_axes": (FSDP_MESH, AxisType.Explicit, FSDP, "d"),
}


def _params():
  rng = np.random.default_rng(0)
  return {k: (0.1 * rng.standard_normal(s)).astype(np.float32)
          for k, s in SHAPES.items()}


def _grads(step):
  rng = np.random.default_rng(1000 + step)
  return {k: rng.standard_normal(s).astype(np.float32)
          for k, s in SHAPES.items()}


def _rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _reference_trajectory(alias_name):
  """Params after each step, from tests/reference.py (float64)."""
  _, _, ref_cls, ref_kwargs, _ = ALIASES[alias_name]
  params = _params()
  out = []
  directions = {}
  for k, s in SHAPES.items():
    if k == "stack":
      directions[k] = [ref_cls(s[1:], **ref_kwargs) for _ in range(s[0])]
    elif len(s) >= 2:
      directions[k] = ref_cls(s, **ref_kwargs)
  adam = (np.zeros(SHAPES["bias"]), np.zeros(SHAPES["bias"]), 0)
  want = {k: p.astype(np.float64) for k, p in params.items()}
  radii = {k: [ref.hyperball_radius(m) for m in (p if k == "stack" else [p])]
           for k, p in want.items() if k != "bias"}

  def step(p, u, radius):
    if alias_name in HYPERBALL:
      return ref.hyperball_step(p, u + WD * p, LR, *radius)
    return ref.sgd_step(p, u, LR, WD)

  for t in range(STEPS):
    g = _grads(t)
    for k in SHAPES:
      if k == "bias":
        adam, want[k] = ref.adamw_step(adam, want[k], g[k], 3e-4)
      elif k == "stack":
        want[k] = np.stack([
            step(want[k][i], v(g[k][i]), radii[k][i])
            for i, v in enumerate(directions[k])])
      else:
        want[k] = step(want[k], directions[k](g[k]), radii[k][0])
    out.append(dict(want))
  return out


def _make_tx(alias_name, **mesh_kwargs):
  alias, kwargs, *_ = ALIASES[alias_name]
  return alias(LR, weight_decay=WD, batch_axes=_batch_axes, **kwargs,
               **mesh_kwargs)


def _run(tx, params, place=lambda t: t):
  step = jax.jit(lambda g, s, p: _apply(tx, g, s, p))
  state = tx.init(params)
  init_state = state
  traj = []
  for t in range(STEPS):
    params, state = step(place(_grads(t)), state, params)
    traj.append(params)
  return traj, init_state, state


def _apply(tx, g, s, p):
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s


def _muon_state(state):
  """The Muon-family inner state of an alias's multi_transform state."""
  return state.inner_states["muon"].inner_state[0]


def _radius_mismatches(state, param_specs, mesh, when):
  """Hyperball's radii (one per matrix) must be sharded like their param's
  batch axes (replicated for a single matrix)."""
  radius = state.inner_states["muon"].inner_state[-1].radius
  bad = []
  for k, spec in param_specs.items():
    if k == "bias":
      continue
    want = NamedSharding(mesh, P(*tuple(spec)[:1]) if k == "stack" else P())
    if _mismatch(radius[k], want, exact=True):
      bad.append(f"{when}: radius/{k} is {radius[k].sharding.spec}, "
                 f"want {want.spec}")
  return bad


def _expected_state_specs(alias_name, param_specs):
  """What each state field's leaves should be sharded like, by the rule:
  mu like the param; per-matrix statistics along the param's batch axes;
  NorMuon's per-neuron nu like the fan-out axis; MomMuon's (k, k) matrices
  like the small side's axis on their first axis."""
  def spec_at(spec, axes):
    spec = tuple(spec) + (None,) * 8
    return P(*[None if a is None else spec[a] for a in axes])

  out = {"mu": {}}
  for k, spec in param_specs.items():
    if k == "bias":
      continue
    out["mu"][k] = spec
    nd = len(SHAPES[k])
    batch = (0,) if nd == 3 else ()
    if alias_name == "adamuon":
      out.setdefault("nu", {})[k] = spec_at(spec, batch)
    elif alias_name == "normuon":
      out.setdefault("nu", {})[k] = spec_at(spec, batch + (nd - 1,))
    elif alias_name.startswith("mommuon"):
      shape = SHAPES[k][len(batch):]
      fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
      if fan_in > fan_out:
        small = nd - 1
      else:
        small = nd - 2 if len(shape) == 2 else None
      fields = ("precond", "gram") if "gram" in alias_name else ("precond",)
      for f in fields:
        out.setdefault(f, {})[k] = spec_at(spec, batch + (small, None))
  return out


def _mismatch(leaf, want, exact):
  """Whether ``leaf`` is not placed as ``want`` (``exact``), or (not exact)
  holds more per device than ``want`` would: under Auto axes a jit without
  ``out_shardings`` lets the partitioner pick the outputs' layouts, and it
  may shard further, never less."""
  if leaf.sharding.is_equivalent_to(want, leaf.ndim):
    return False
  if exact:
    return True
  return (np.prod(leaf.sharding.shard_shape(leaf.shape))
          > np.prod(want.shard_shape(leaf.shape)))


try:
  importlib.import_module("jax.experimental.shard_alike")
  _HAS_SHARD_ALIKE = True
except ImportError:
  _HAS_SHARD_ALIKE = False


def _sharding_mismatches(state, expected, mesh, when, exact):
  """Leaves of the Muon-family ``state`` not sharded as ``expected``."""
  bad = []
  for field, specs in expected.items():
    tree = getattr(state, field)
    for k, spec in specs.items():
      if _mismatch(tree[k], NamedSharding(mesh, spec), exact):
        bad.append(f"{when}: {field}/{k} is {tree[k].sharding.spec}, "
                   f"want {spec}")
  return bad


def _param_shaped_mismatches(tree, specs, mesh, when, exact):
  """The momenta of the whole optimizer state (Muon's mu, AdamW's mu and
  nu), or the params, must be sharded like the params."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = getattr(path[-1], "key", None)
    fields = {getattr(k, "name", None) for k in path}
    if (name in SHAPES and tuple(leaf.shape) == SHAPES[name]
        and (fields & {"mu", "nu"} or len(path) == 1)):
      if _mismatch(leaf, NamedSharding(mesh, specs[name]), exact):
        bad.append(f"{when}: {jax.tree_util.keystr(path)} is "
                   f"{leaf.sharding.spec}, want {specs[name]}")
  return bad


def cmd_steps(alias_name, layouts=tuple(LAYOUTS)):
  """Each of ``layouts``: params after each step against one device and
  against the NumPy reference; state shardings after init and after the
  steps."""
  rtol_ref = ALIASES[alias_name][4]
  want = _reference_trajectory(alias_name)
  params0 = _params()
  single, _, single_state = _run(_make_tx(alias_name), params0)
  report = {"layouts": {}}
  for layout in layouts:
    (shape, names), axis_type, specs, split = LAYOUTS[layout]
    mesh = jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))
    place = lambda tree, specs=specs, mesh=mesh: {
        k: jax.device_put(v, NamedSharding(mesh, specs[k]))
        for k, v in tree.items()}
    with jax.set_mesh(mesh):
      tx = _make_tx(alias_name, ns_mesh_axis=split)
      traj, init_state, state = _run(tx, place(params0), place)
    expected = _expected_state_specs(alias_name, specs)
    exact = axis_type == AxisType.Explicit
    bad = _sharding_mismatches(_muon_state(init_state), expected, mesh,
                               "after init", exact=True)
    bad += _param_shaped_mismatches(init_state, specs, mesh, "after init",
                                    exact=True)
    if alias_name in HYPERBALL:
      bad += _radius_mismatches(init_state, specs, mesh, "after init")
    if exact or _HAS_SHARD_ALIKE:
      # Under Auto axes without jax.experimental.shard_alike (JAX 0.11) the
      # partitioner lays out the new state as it likes.
      bad += _sharding_mismatches(_muon_state(state), expected, mesh,
                                  "after the steps", exact)
    bad += _param_shaped_mismatches(state, specs, mesh, "after the steps",
                                    exact)
    bad += _param_shaped_mismatches(traj[-1], specs, mesh, "params", exact)
    vs_single = max(
        _rel(traj[t][k] - params0[k], single[t][k] - params0[k])
        for t in range(STEPS) for k in SHAPES)
    vs_ref = max(
        _rel(traj[t][k] - params0[k], want[t][k] - params0[k])
        for t in range(STEPS) for k in SHAPES)
    state_vs_single = max(
        _rel(a, b) for a, b in zip(
            jax.tree.leaves(_muon_state(state)[1:]),
            jax.tree.leaves(_muon_state(single_state)[1:])))
    report["layouts"][layout] = {
        "vs_single_device": vs_single, "vs_reference": vs_ref,
        "state_vs_single_device": state_vs_single, "rtol_reference": rtol_ref,
        "sharding_mismatches": bad}
  return report


def cmd_flops():
  """Per-device flops of the compiled step, replicated params, 8 devices."""
  shapes = {f"w{i}": (64, 64) for i in range(8)}
  shapes.update({f"v{i}": (32, 64) for i in range(8)})
  rng = np.random.default_rng(0)
  params = {k: rng.standard_normal(s).astype(np.float32)
            for k, s in shapes.items()}
  mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  out = {}
  for split in (None, "d"):
    tx = om.muon(0.02, ns_mesh_axis=split, mesh=mesh)
    state = tx.init(params)
    compiled = jax.jit(lambda g, s, p, tx=tx: _apply(tx, g, s, p)).lower(
        params, state, params).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["split" if split else "no_split"] = float(cost["flops"])
  out["ratio"] = out["split"] / out["no_split"]
  return out


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "examples", "sharded_train.py")
# The example at its defaults on 8 devices, 10 steps, saving checkpoints at
# steps 5 and 10.
EXAMPLE_ARGS = ("--simulate", "8", "--steps", "10", "--checkpoint-every",
                "5")


def _run_example(argv):
  """``examples/sharded_train.py argv`` run as ``__main__`` (its --simulate
  8 asks for the 8 devices this process has); what it prints."""
  saved, out = sys.argv, io.StringIO()
  sys.argv = [EXAMPLE, *argv]
  try:
    with contextlib.redirect_stdout(out):
      runpy.run_path(EXAMPLE, run_name="__main__")
  finally:
    sys.argv = saved
  return out.getvalue()


def cmd_example():
  """``examples/sharded_train.py`` with ``EXAMPLE_ARGS`` and a checkpoint
  folder; then, as after a crash between the saves of steps 5 and 10 (the
  step-10 checkpoint removed), the same command with ``--resume``.
  Returns both runs' argv and stdout."""
  import shutil
  import tempfile
  with tempfile.TemporaryDirectory() as directory:
    first = [*EXAMPLE_ARGS, "--checkpoint-dir", directory]
    stdout = _run_example(first)
    shutil.rmtree(os.path.join(directory, "10"))
    again = [*first, "--resume"]
    resumed = _run_example(again)
  return {"argv": first, "stdout": stdout, "resume_argv": again,
          "resumed_stdout": resumed}


# ------------------------------------------------ resume on another mesh ----

# Keller Jordan's quintic has slope a = 3.4445 at the origin and less in
# magnitude elsewhere on [0, 1], so a relative perturbation of its input
# grows at most a-fold per iteration: a few float32 roundings (eps = 2^-23)
# amplified over the 5 steps bound the difference between two float32
# computations of one update that only sum in a different order (sharded
# matmuls and norms, another number of devices).
F32_RTOL = 4 * 3.4445**5 * float(np.finfo(np.float32).eps)  # ~2.3e-4

REPLICATED = {k: P() for k in SHAPES}
# case -> (param specs on a ("d",) mesh, axis type); "+split" adds
# ns_mesh_axis="d".
RESUME_CASES = {
    "fsdp_auto": (FSDP, AxisType.Auto),
    "fsdp_explicit": (FSDP, AxisType.Explicit),
    "replicated_auto": (REPLICATED, AxisType.Auto),
    "replicated_explicit": (REPLICATED, AxisType.Explicit),
}
# (devices, steps) of each phase: a checkpoint after each, restored onto
# the next phase's mesh. 8 steps in all: MomMuon (ns_every=5 by default)
# refreshes at steps 1 and 6, so the resumes at steps 2 and 4 fall inside
# its refresh cycle, the one at step 6 just after a refresh.
RESUME_PHASES = ((8, 2), (4, 2), (1, 2), (8, 2))


def _resume_tx(alias_name, split):
  return om.ALIASES[alias_name](LR, ns_mesh_axis="d" if split else None)


def _restore_target(tx, mesh, specs):
  """The abstract target on ``mesh``: the params' and a fresh optimizer
  state's shapes, dtypes and shardings (the recipe of README's
  "Checkpointing")."""
  import orbax.checkpoint as ocp
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
              for k, v in _params().items()}
    fresh = {"params": params, "opt_state": tx.init(params)}
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)


def cmd_resume(alias_name, cases, directory):
  """For each case: ``sum(steps)`` steps of the alias in the phases of
  ``RESUME_PHASES`` (8 -> 4 -> 1 -> 8 devices), an orbax checkpoint after
  each phase restored onto the next phase's mesh with that mesh's
  shardings; against an uninterrupted run on one device without a mesh.

  Reports per case: ``params_vs_bound``, the largest ratio over the leaves
  of the relative error of the params' change (params - initial params)
  to its bound ``F32_RTOL * sum_t |p_t - p_(t-1)| / |p_T - p_0|`` (each
  step's update may differ by ``F32_RTOL`` of its norm: see F32_RTOL); the
  errors add up over the steps, and relative to the total change they are
  larger where updates partly cancel); ``state_vs_single_device``, the
  largest relative error of a state leaf; ``restore_mismatches``, restored
  leaves not laid out as their target (the new mesh's shardings).
  """
  import orbax.checkpoint as ocp
  total = sum(n for _, n in RESUME_PHASES)
  params0 = _params()
  tx = _resume_tx(alias_name, split=False)
  step = jax.jit(lambda g, s, p: _apply(tx, g, s, p))
  params, state = params0, tx.init(params0)
  path_len = {k: 0.0 for k in SHAPES}
  for t in range(total):
    new, state = step(_grads(t), state, params)
    for k in SHAPES:
      path_len[k] += float(np.linalg.norm(np.asarray(new[k], np.float64)
                                          - np.asarray(params[k])))
    params = new
  want_params, want_state = params, state
  bound = {k: F32_RTOL * path_len[k] / max(float(np.linalg.norm(
      np.asarray(want_params[k], np.float64) - params0[k])), 1e-30)
           for k in SHAPES}

  checkpointer = ocp.StandardCheckpointer()
  report = {}
  for case in cases:
    layout, _, split = case.partition("+")
    if split not in ("", "split"):
      raise SystemExit(f"unknown resume case {case!r}")
    specs, axis_type = RESUME_CASES[layout]
    tx = _resume_tx(alias_name, split == "split")
    t, bad, saved = 0, [], None
    for phase, (devices, steps) in enumerate(RESUME_PHASES):
      mesh = jax.make_mesh((devices,), ("d",), axis_types=(axis_type,),
                           devices=jax.devices()[:devices])
      target = _restore_target(tx, mesh, specs)
      with jax.set_mesh(mesh):
        if saved is None:
          params = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
                    for k, v in params0.items()}
          tree = {"params": params, "opt_state": tx.init(params)}
        else:
          tree = checkpointer.restore(saved, target)
          for (path, leaf), want in zip(
              jax.tree_util.tree_leaves_with_path(tree),
              jax.tree.leaves(target)):
            if not leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim):
              bad.append(f"phase {phase}: {jax.tree_util.keystr(path)} is "
                         f"{leaf.sharding}, want {want.sharding}")
        run = jax.jit(lambda g, s, p, tx=tx: _apply(tx, g, s, p))
        params, state = tree["params"], tree["opt_state"]
        for _ in range(steps):
          grads = {k: jax.device_put(v, NamedSharding(mesh, specs[k]))
                   for k, v in _grads(t).items()}
          params, state = run(grads, state, params)
          t += 1
        saved = os.path.join(directory, f"{alias_name}-{case}-{phase}")
        checkpointer.save(saved, {"params": params, "opt_state": state})
        checkpointer.wait_until_finished()
    params_vs_bound = max(
        _rel(np.asarray(params[k]) - params0[k],
             np.asarray(want_params[k]) - params0[k]) / bound[k]
        for k in SHAPES)
    state_err = max((_rel(a, b) for a, b in zip(
        jax.tree.leaves(state), jax.tree.leaves(want_state))), default=0.0)
    report[case] = {"params_vs_bound": params_vs_bound,
                    "state_vs_single_device": state_err,
                    "steps": t, "restore_mismatches": bad}
  return report


def main(argv):
  assert jax.device_count() == 8, (
      "run with XLA_FLAGS=--xla_force_host_platform_device_count=8, got "
      f"{jax.device_count()} devices ({os.environ.get('XLA_FLAGS')!r})")
  jax.config.update("jax_default_matmul_precision", "highest")
  reports = {}
  for check in argv:
    command, *rest = check.split(":")
    if command == "steps" and len(rest) in (1, 2):
      layouts = tuple(rest[1].split(",")) if len(rest) == 2 else tuple(
          LAYOUTS)
      reports[check] = cmd_steps(rest[0], layouts)
    elif command == "flops" and not rest:
      reports[check] = cmd_flops()
    elif command == "example" and not rest:
      reports[check] = cmd_example()
    elif command == "resume" and len(rest) == 2:
      import tempfile
      with tempfile.TemporaryDirectory() as directory:
        reports[check] = cmd_resume(rest[0], rest[1].split(","), directory)
    else:
      raise SystemExit(f"unknown check {check!r}")
  print(json.dumps(reports))


if __name__ == "__main__":
  main(sys.argv[1:])
