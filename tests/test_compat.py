"""The package on JAX versions without the experimental APIs it once used.

JAX 0.11.2 has no ``jax.experimental.shard_alike``; the check runs in a
separate process in which that module cannot be imported (a ``sys.meta_path``
finder installed before jax and optax_muon are imported raises
``ImportError`` for it), with 4 simulated CPU devices so that the split
Newton–Schulz (``ns_mesh_axis``) really spans several devices.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Keller Jordan's quintic has slope a = 3.4445 at the origin and less in
# magnitude elsewhere on [0, 1], so a relative perturbation of the input grows
# at most a-fold per iteration: a few float32 roundings (eps = 2^-23) per
# step, amplified over the 5 steps, bound the error against float64.
F32_RTOL = 4 * 3.4445**5 * float(np.finfo(np.float32).eps)  # ~2.3e-4

_SCRIPT = textwrap.dedent("""
  import importlib.abc
  import json
  import sys

  BLOCKED = "jax.experimental.shard_alike"


  class _Removed(importlib.abc.MetaPathFinder):
    # As on a JAX without the module.
    def find_spec(self, name, path, target=None):
      if name == BLOCKED or name.startswith(BLOCKED + "."):
        raise ImportError(f"No module named {name!r} (blocked by the test)")
      return None


  sys.meta_path.insert(0, _Removed())
  sys.modules.pop(BLOCKED, None)

  import jax
  import jax.numpy as jnp
  import numpy as np

  try:
    from jax.experimental import shard_alike  # noqa: F401
    blocked = False
  except ImportError:
    blocked = True

  import optax_muon as om
  from tests import reference as ref

  assert jax.device_count() == 4, jax.devices()
  rng = np.random.default_rng(0)
  # Three matrices on a 4-device axis: the stack is padded to 4.
  shapes = {"a": (8, 16), "b": (8, 16), "c": (16, 8)}
  mesh = jax.make_mesh((4,), ("x",))
  tx = om.scale_by_muon(ns_mesh_axis="x", mesh=mesh, ns_dtype=jnp.float32)
  refs = {k: ref.Muon(s) for k, s in shapes.items()}
  params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
  state = tx.init(params)
  errors = []
  for _ in range(2):
    grads = {k: rng.standard_normal(s).astype(np.float32)
             for k, s in shapes.items()}
    updates, state = jax.jit(tx.update)(grads, state)
    for k in shapes:
      want = refs[k](grads[k])
      got = np.asarray(updates[k], np.float64)
      errors.append(float(np.linalg.norm(got - want) / np.linalg.norm(want)))
  print(json.dumps({"blocked": blocked, "errors": errors,
                    "shard_alike_loaded": BLOCKED in sys.modules}))
""")


def test_imports_and_splits_without_jax_experimental_shard_alike():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["blocked"], "the finder did not hide shard_alike"
  assert not report["shard_alike_loaded"], report
  assert len(report["errors"]) == 6
  assert max(report["errors"]) < F32_RTOL, report
