"""Several hosts, simulated: 2 processes x 2 CPU devices on the loopback address.

The test starts 2 processes that join one JAX cluster
(``jax.distributed.initialize("127.0.0.1:PORT", num_processes=2,
process_id=i)``, CPU collectives over Gloo) and run over a mesh of all 4
devices, so the optimizer's collectives cross the process boundary. The
processes listen on the loopback address only and are killed if they run
past a timeout. Marked slow (a minute or two on 2 cores): ``-m "not slow"``
leaves them out.
"""

import contextlib
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import _multihost_worker as mw
from tests import _sharding_worker as sw
from tests.test_sharding import check_example_output

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
TIMEOUT_S = 600

# Keller Jordan's quintic has slope a = 3.4445 at the origin and less in
# magnitude elsewhere on [0, 1], so a relative perturbation of the input grows
# at most a-fold per iteration: a few float32 roundings (eps = 2^-23) per
# step, amplified over the 5 steps, bound the difference between two float32
# computations that only sum in a different order, and the error against
# float64.
F32_RTOL = 4 * 3.4445**5 * float(np.finfo(np.float32).eps)  # ~2.3e-4


def _free_port():
  with contextlib.closing(socket.socket(socket.AF_INET,
                                        socket.SOCK_STREAM)) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(make_argv, devices_per_process=2):
  """Starts ``NUM_PROCESSES`` processes, ``make_argv(coordinator, i)`` each;
  returns their stdouts, or fails with their stderrs. All are killed if
  one fails or they run past ``TIMEOUT_S``. One retry with a new port if the
  coordinator's port was taken meanwhile."""
  flags = (f"--xla_force_host_platform_device_count={devices_per_process}"
           " --xla_backend_optimization_level=0")
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  for attempt in range(2):
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(make_argv(coordinator, i), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(NUM_PROCESSES)]
    outs = []
    try:
      for p in procs:
        outs.append(p.communicate(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      for p in procs:
        p.communicate()
      pytest.fail(f"{NUM_PROCESSES} processes ran past {TIMEOUT_S} s")
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.communicate()
    codes = [p.returncode for p in procs]
    if all(c == 0 for c in codes):
      return [o for o, _ in outs]
    errors = "\n".join(f"--- process {i} (exit {c}):\n{e[-3000:]}"
                       for i, (c, (_, e)) in enumerate(zip(codes, outs)))
    if attempt == 0 and "address already in use" in errors.lower():
      continue
    pytest.fail(errors)


def _check_example(outs):
  """examples/sharded_train.py on the cluster: both processes finish,
  report the 4-device cluster and print the same finite, falling losses
  (test_sharding.check_example_output: the FSDP params and their momentum
  stay sharded)."""
  losses = [check_example_output(out, 4, 2) for out in outs]
  assert losses[0] == losses[1], losses
  assert losses[0][-1] < losses[0][0] - 0.5, outs[0]


def _check_layouts(results):
  """om.muon's params after each step, per layout: the same in every
  process, and matching one process on one device and the float64 NumPy
  reference."""
  params0 = sw._params()
  single, _, _ = sw._run(sw._make_tx("muon"), params0)
  want = sw._reference_trajectory("muon")
  for layout in mw.LAYOUTS:
    for t in range(sw.STEPS):
      for k in sw.SHAPES:
        name = f"{layout}/{t}/{k}"
        got = results[0][name]
        for other in results[1:]:
          np.testing.assert_array_equal(other[name], got, err_msg=name)
        step = got - params0[k]
        vs_single = sw._rel(step, np.asarray(single[t][k]) - params0[k])
        vs_ref = sw._rel(step, want[t][k] - params0[k])
        assert vs_single < F32_RTOL, (name, vs_single)
        assert vs_ref < F32_RTOL, (name, vs_ref)


def test_example_and_steps_on_a_two_process_mesh(tmp_path):
  """One cluster of 2 processes (one start for both checks): first
  examples/sharded_train.py with --coordinator / --num-processes /
  --process-id in each (see _check_example); then om.muon over the 4
  devices, FSDP (Explicit axes) and mixed FSDP / tensor-parallel (Auto axes),
  with and without ns_mesh_axis (see _check_layouts)."""
  outs = _launch(lambda coordinator, i: [
      sys.executable, "-m", "tests._multihost_worker", coordinator,
      str(NUM_PROCESSES), str(i), str(tmp_path)])
  _check_example(outs)
  _check_layouts([np.load(tmp_path / f"process_{i}.npz")
                  for i in range(NUM_PROCESSES)])


@pytest.mark.integration
def test_example_resumes_from_two_processes_on_one(tmp_path):
  """examples/sharded_train.py at its defaults on 2 processes x 2 devices,
  10 steps, checkpoints at steps 5 and 10; the step-10 checkpoint removed
  (as by a crash before it was written), resumed on 1 process with 8
  devices (another mesh, another process count): it ends at the 2-process
  run's loss. Every process draws the same global batch (--seed), so the
  data do not depend on the cluster; what differs is float32 summation
  order, a few roundings per step that Newton–Schulz amplifies at most
  3.4445^5-fold (F32_RTOL) in an update of lr = 0.02 times a unit-spectral-
  norm matrix: the loss moves by ~1e-7 relative; rtol 1e-5 is 100 float32
  ulps, far below what one lost optimizer state or batch changes (~1e-2)."""
  ckpt = tmp_path / "ckpt"
  example = os.path.join(ROOT, "examples", "sharded_train.py")
  args = ["--steps", "10", "--checkpoint-every", "5", "--checkpoint-dir",
          str(ckpt)]
  outs = _launch(lambda coordinator, i: [
      sys.executable, example, "--simulate", "2", *args, "--coordinator",
      coordinator, "--num-processes", str(NUM_PROCESSES), "--process-id",
      str(i)])
  _check_example(outs)
  import shutil
  shutil.rmtree(ckpt / "10")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, env.get("PYTHONPATH")) if p)
  proc = subprocess.run([sys.executable, example, "--simulate", "8", *args,
                         "--resume"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from step 5" in proc.stdout, proc.stdout
  check_example_output(proc.stdout, 8, 1)
  want = float(re.findall(r"final loss (\S+) at step 10", outs[0])[0])
  got = float(re.findall(r"final loss (\S+) at step 10", proc.stdout)[0])
  np.testing.assert_allclose(got, want, rtol=1e-5)
