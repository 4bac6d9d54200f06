"""Tolerances that follow from the dtype Newton–Schulz computes in.

The library's precision contract (README): ``ns_dtype=None`` computes in
float32 on the CPU and in bfloat16 (float32 accumulation) on GPU and TPU; an
explicit ``ns_dtype`` is used as given. A test that checks float32 math pins
``ns_dtype=jnp.float32``; a test that runs the default passes its float32
tolerance through :func:`tol`, which widens it to a few units in the last
place of the compute dtype where that is narrower than float32. So the same
suite means the same on every backend, and is exactly as strict as before on
the CPU.

Written from the contract, not from the library, so that a change of the
library's default shows up as failing tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

ON_CPU = jax.default_backend() == "cpu"


def default_ns_dtype() -> jnp.dtype:
  """What ``ns_dtype=None`` computes in on this backend."""
  return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu"
                   else jnp.bfloat16)


def compute_dtype(ns_dtype=None) -> jnp.dtype:
  """The dtype Newton–Schulz runs in for the ``ns_dtype`` argument given."""
  return default_ns_dtype() if ns_dtype is None else jnp.dtype(ns_dtype)


def is_float32(ns_dtype=None) -> bool:
  """Whether the arithmetic is float32 (or wider) for this ``ns_dtype``."""
  return jnp.finfo(compute_dtype(ns_dtype)).bits >= 32


def tol(float32_tol: float, ns_dtype=None, ulps: float = 4.0) -> float:
  """``float32_tol`` where the compute dtype is float32 or wider, else
  ``ulps`` units in the last place of the compute dtype (bfloat16: 4 x 2^-7
  = 0.031; float16: 4 x 2^-10 = 0.0039), whichever is larger."""
  if is_float32(ns_dtype):
    return float32_tol
  return max(float32_tol, ulps * float(jnp.finfo(compute_dtype(ns_dtype)).eps))


def dtype_name(ns_dtype=None) -> str:
  """``"float32"``, ``"bfloat16"``, ... for keys of per-dtype tables."""
  return compute_dtype(ns_dtype).name


requires_cpu = pytest.mark.skipif(
    not ON_CPU,
    reason="checks a CPU default (ns_dtype=None is float32 only on the CPU); "
    "the same property is tested with an explicit ns_dtype elsewhere")
