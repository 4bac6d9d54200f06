"""On a device mesh: sharded params and the split Newton–Schulz.

The multi-device checks (and examples/sharded_train.py on 8 devices) run in
a separate process with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before
jax is imported), see ``tests/_sharding_worker.py``; the checks that need no
second device run here.
"""

import inspect
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_muon as om
from tests import _sharding_worker as sw
from tests import _sweeps
from tests import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The worker's step checks: one alias per kind of extra state placement:
# none (Muon; OGSignMuon is the same skeleton), a matrix at the small side
# plus the batch axes (MomMuon; AdaMuon's scalar per matrix is placed by the
# batch axes alone), a vector along fan-out (NorMuon); and the layouts of
# tests/_sharding_worker.py each runs: every alias one layout under Auto and
# one under Explicit axes, every layout at least once. MomMuon and NorMuon
# are Muon's skeleton plus extra state, which init places like its param
# and each step hands through MeshPlan.run (under Auto axes tied to the
# incoming layout, under Explicit axes resharded to it): they take the
# layouts with a split over both axes of the mesh with a leaf of every
# layout ("mixed", "mixed_explicit_axes"), which run Muon's own path too;
# Muon takes the other two ("mixed_no_split", "fsdp_explicit_axes"). Muon's
# steps on mixed layouts with a split also run on two processes in
# test_multihost.py.
WORKER_LAYOUTS = {
    "muon": ("mixed_no_split", "fsdp_explicit_axes"),
    "mommuon_every_2": ("mixed", "mixed_explicit_axes"),
    "normuon": ("mixed", "mixed_explicit_axes"),
    # Muon's skeleton, then Hyperball's per-matrix radii along batch axes.
    "muonh": ("mixed_explicit_axes",),
}
SCALE_BY = [om.scale_by_muon, om.scale_by_adamuon, om.scale_by_mommuon,
            om.scale_by_ogsignmuon, om.scale_by_normuon]
ALIASES = list(om.ALIASES.values())


def _worker(*checks):
  """Runs ``python -m tests._sharding_worker *checks`` on 8 CPU devices, at
  backend optimisation level 0 (the step checks compile a dozen programs;
  the flops check reads the partitioned HLO's cost analysis, the same at
  every level); returns ``{check: report}``."""
  flags = ("--xla_force_host_platform_device_count=8"
           " --xla_backend_optimization_level=0")
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  proc = subprocess.run(
      [sys.executable, "-m", "tests._sharding_worker", *checks], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


# The resume case of the worker in `make test` (every alias and case:
# test_resume_on_other_meshes_every_alias_and_layout, integration).
RESUME_FAST = "resume:muon:fsdp_explicit+split"


def check_resume_report(report):
  """A ``resume:`` report of the worker: every case ran all its steps,
  each restored array is laid out as its target on the new mesh, and the
  params and state match the uninterrupted one-device run within the
  float32 bound (sw.F32_RTOL per step: sw.cmd_resume). The state is held
  to the one-step bound: its EMAs average the per-step errors, and the
  momenta see the same gradients (elementwise, so exactly equal)."""
  for case, r in report.items():
    assert r["steps"] == sum(n for _, n in sw.RESUME_PHASES), (case, r)
    assert r["restore_mismatches"] == [], (case, r["restore_mismatches"])
    assert r["params_vs_bound"] < 1.0, (case, r)
    assert r["state_vs_single_device"] < sw.F32_RTOL, (case, r)


def check_example_output(out, devices, processes):
  """What examples/sharded_train.py prints: the cluster, the split, losses
  that fall, and the MLP kernel (64, 256) with its first moment (Muon's
  momentum or AdamW's mu, wherever the routing sent it) FSDP-sharded on
  its 256 axis. Returns the losses."""
  assert f"{devices} devices (cpu), {processes} process(es)" in out, out
  assert "ns_mesh_axis=data" in out, out
  assert "blocks[0].mlp.fc.kernel (64, 256): P(None, 'data')" in out, out
  assert re.search(r"after training: blocks\[0\]\.mlp\.fc\.kernel "
                   r"P\(None, 'data'\) \((muon|adamw)\), its momentum "
                   r"P\(None, 'data'\)", out), out
  losses = [float(x) for x in re.findall(r"loss (\d+\.\d+) ", out)]
  assert len(losses) >= 2 and all(np.isfinite(losses)), out
  return losses


@pytest.mark.slow
def test_on_8_devices_steps_flops_resume_and_the_sharded_train_example():
  """One worker process on 8 devices runs every multi-device check.

  Steps, for each alias of WORKER_LAYOUTS: two steps with params laid out
  replicated / FSDP / tensor-parallel (all in one tree, so one stack mixes
  them), with and without ns_mesh_axis, under Auto and Explicit mesh axes:
  the params match one device to 1e-4 and the NumPy reference; the state is
  sharded like its param.

  Flops: 16 replicated kernels on 8 devices: with ns_mesh_axis each device
  orthogonalises 2 of them instead of 16 (ideal ratio 0.125).

  Resume (RESUME_FAST): Muon, FSDP, Explicit axes, ns_mesh_axis, saved and
  restored 8 -> 4 -> 1 -> 8 devices (check_resume_report).

  Example: examples/sharded_train.py at its defaults on 8 devices, 10
  steps, with checkpoints at steps 5 and 10: its loss falls, FSDP params
  and their momentum stay sharded; resumed from step 5 (the step-10
  checkpoint removed, as by a crash before it was written), it ends at the
  same loss, to the last bit.
  """
  assert set().union(*WORKER_LAYOUTS.values()) == set(sw.LAYOUTS)
  steps = {alias: f"steps:{alias}:{','.join(layouts)}"
           for alias, layouts in WORKER_LAYOUTS.items()}
  reports = _worker(*steps.values(), "flops", RESUME_FAST, "example")
  for alias, check in steps.items():
    report = reports[check]
    assert set(report["layouts"]) == set(WORKER_LAYOUTS[alias]), alias
    for layout, r in report["layouts"].items():
      where = (alias, layout)
      assert r["vs_single_device"] < 1e-4, (where, r)
      assert r["state_vs_single_device"] < 1e-4, (where, r)
      assert r["vs_reference"] < r["rtol_reference"], (where, r)
      assert r["sharding_mismatches"] == [], (where,
                                              r["sharding_mismatches"])
  flops = reports["flops"]
  assert flops["no_split"] > 0
  assert flops["ratio"] <= 0.25, flops
  check_resume_report(reports[RESUME_FAST])
  example = reports["example"]
  assert example["argv"][:4] == ["--simulate", "8", "--steps", "10"]
  out = example["stdout"]
  losses = check_example_output(out, 8, 1)
  assert losses[-1] < losses[0] - 0.5, out
  resumed = example["resumed_stdout"]
  assert "resumed from step 5" in resumed, resumed
  assert "step    6  loss" in resumed and "step    1 " not in resumed
  final = re.findall(r"final loss (\S+) at step 10", out)
  assert final and re.findall(r"final loss (\S+) at step 10",
                              resumed) == final, (out, resumed)


def _resume_cases():
  return [f"{layout}{split}" for layout in sw.RESUME_CASES
          for split in ("", "+split")]


@pytest.mark.integration
@pytest.mark.parametrize("alias", list(_sweeps.ALIASES))
def test_resume_on_other_meshes_every_layout(alias):
  """Every alias of tests/_sweeps.py (one worker each), FSDP and replicated
  params, Auto and Explicit axes, with and without ns_mesh_axis: saved on 8
  devices, restored onto 4, then 1, then 8 (check_resume_report)."""
  check = f"resume:{alias}:{','.join(_resume_cases())}"
  report = _worker(check)[check]
  assert set(report) == set(_resume_cases()), report
  check_resume_report(report)


# ----------------------------------------------------- on one device ----


@pytest.mark.parametrize("fn", SCALE_BY + ALIASES,
                         ids=lambda f: f.__name__)
def test_every_alias_and_transform_takes_ns_mesh_axis_and_mesh(fn):
  params = inspect.signature(fn).parameters
  assert params["ns_mesh_axis"].default is None
  assert params["mesh"].default is None


@pytest.mark.parametrize("fn", _sweeps.sweep(SCALE_BY + ALIASES, fast=None))
def test_ns_mesh_axis_without_any_mesh_raises(fn):
  params = {"w": jnp.ones((8, 16))}
  kwargs = {"param_labels": {"w": "muon"}} if fn in ALIASES else {}
  tx = fn(ns_mesh_axis="data", **kwargs)
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs a device mesh"):
    jax.jit(tx.update)(params, state, params)


def test_mesh_without_the_axis_raises():
  mesh = jax.make_mesh((1,), ("x",))
  with pytest.raises(ValueError, match=r"names \['data'\]"):
    om.scale_by_muon(ns_mesh_axis="data", mesh=mesh)
  with pytest.raises(ValueError, match="tuple of distinct names"):
    om.muon(ns_mesh_axis=("x", "x"), mesh=mesh)


def test_mesh_that_is_not_the_ambient_one_raises():
  tx = om.scale_by_muon(ns_mesh_axis="x",
                        mesh=jax.make_mesh((1,), ("x",)))
  params = {"w": jnp.ones((8, 16))}
  state = tx.init(params)
  with jax.set_mesh(jax.make_mesh((1,), ("y",))):
    with pytest.raises(ValueError, match="not the ambient"):
      jax.jit(tx.update)(params, state)


@pytest.mark.parametrize("ambient", [False, True])
def test_split_on_a_one_device_mesh_matches_reference(ambient):
  """Three (8, 16) matrices padded to a multiple of the axis size: the
  same steps as the NumPy reference, from mesh= or the ambient mesh."""
  rng = np.random.default_rng(0)
  shapes = {"a": (8, 16), "b": (8, 16), "c": (16, 8)}
  mesh = jax.make_mesh((1,), ("x",))
  tx = om.scale_by_muon(ns_mesh_axis="x", mesh=None if ambient else mesh,
                        ns_dtype=jnp.float32)
  refs = {k: ref.Muon(s) for k, s in shapes.items()}
  params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  with jax.set_mesh(mesh) if ambient else _nothing():
    state = tx.init(params)
    for _ in range(2):
      grads = {k: rng.standard_normal(s).astype(np.float32)
               for k, s in shapes.items()}
      updates, state = jax.jit(tx.update)(grads, state)
      for k in shapes:
        want = refs[k](grads[k])
        err = np.linalg.norm(updates[k] - want) / np.linalg.norm(want)
        assert err < 1e-4, (k, err)


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


@pytest.mark.parametrize("alias", _sweeps.sweep(ALIASES, fast=None))
def test_inject_hyperparams_keeps_the_mesh_static(alias):
  """A Mesh is callable (a context decorator): unless static, inject_hyperparams
  would take it for a schedule."""
  assert "mesh" in om.static_args(alias)
  mesh = jax.make_mesh((1,), ("x",))
  tx = optax.inject_hyperparams(alias, static_args=om.static_args(alias))(
      learning_rate=0.02, ns_mesh_axis="x", mesh=mesh)
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16)}
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
  assert bool(jnp.all(jnp.isfinite(updates["w"])))
  assert float(jnp.abs(updates["w"]).max()) > 0
