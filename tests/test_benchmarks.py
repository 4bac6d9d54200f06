"""The benchmarks' own baselines, where their optional dependencies exist.

``benchmarks/step_time.py``'s PyTorch rows re-implement Keller Jordan's
``muon_update``; here one update is checked against the NumPy reference's
Muon step (tests/reference.py). Skipped where PyTorch is not installed.
"""

import os
import sys

import numpy as np
import pytest

from tests import reference as ref

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import step_time  # noqa: E402


@pytest.mark.parametrize("shape", [(32, 128), (128, 32)])
def test_torch_muon_update_matches_reference(shape):
  """bfloat16 Newton–Schulz: within bfloat16 rounding of the reference, in
  PyTorch's ``(fan_out, fan_in)`` layout."""
  g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  want = ref.Muon(shape)(g)
  tm = step_time.TorchMuon.__new__(step_time.TorchMuon)
  got = tm.muon_update(torch.from_numpy(g.T.copy()),
                       torch.zeros(shape[::-1])).float().numpy().T
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.1
