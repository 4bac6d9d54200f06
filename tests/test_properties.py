"""Property tests of ``orthogonalize`` over random shapes, dtypes and scales.

Issue 7, item 6. Shapes: ``1 x n``, ``n x 1``, tall, wide, square, conv
kernels (through their matrix view) and stacks. Singular values are computed
by NumPy's float64 SVD. The band for well-conditioned input is the one the
``orthogonalize`` docstring documents (measured by benchmarks/ns_band.py):
with 5 steps and every singular value at least ``0.01 ||G||_F``, float32
compute gives ``[0.68, 1.14]`` for ``"quintic"`` and ``[0.85, 1.15]`` for
``"polar_express"``; bfloat16 compute ``[0.64, 1.16]`` and ``[0.79, 1.15]``.
For any input the 5-step maps stay below ``1.2024`` (quintic) and ``1.1412``
(Polar Express) on ``[0, 1]``. The bands of float32 arithmetic are checked
with ``ns_dtype="float32"``; ``ns_dtype=None`` (float32 on the CPU, bfloat16
on GPU/TPU) is checked against the band of the dtype it computes in.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_muon as om
from tests._tolerances import dtype_name

# `make test` only (hypothesis searches over shapes, dtypes and scales);
# `make test-fast` keeps the reference checks of the math.
pytestmark = pytest.mark.slow

SETTINGS = settings(max_examples=12, deadline=None)

DIMS = (1, 2, 3, 5, 8)
KINDS = ("row", "col", "tall", "wide", "square", "conv", "stacked")
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# (lo, hi) of the singular values for well-conditioned input, per preset and
# compute dtype, with a margin of 0.005 for a low-precision input / output.
BAND = {
    ("quintic", "float32"): (0.675, 1.14),
    ("polar_express", "float32"): (0.85, 1.15),
    ("quintic", "bfloat16"): (0.635, 1.165),
    ("polar_express", "bfloat16"): (0.785, 1.155),
}
UPPER = {"quintic": 1.2024, "polar_express": 1.1412}


@functools.cache
def _orthogonalize(ns_coeffs, dtype, form):
  return jax.jit(functools.partial(
      om.orthogonalize, ns_coeffs=ns_coeffs, dtype=dtype, form=form))


@st.composite
def leaf_shapes(draw):
  kind = draw(st.sampled_from(KINDS))
  a, b = sorted(draw(st.sampled_from(DIMS)) for _ in range(2))
  if kind == "row":
    return kind, (1, max(b, 2))
  if kind == "col":
    return kind, (max(b, 2), 1)
  if kind == "tall":
    return kind, (b + 1, a)
  if kind == "wide":
    return kind, (a, b + 1)
  if kind == "square":
    return kind, (b, b)
  if kind == "conv":
    return kind, (draw(st.sampled_from((1, 3))), 3, a, b)
  return kind, (draw(st.sampled_from((2, 3))), a, b)


def _conv_view(shape):
  return om.matrix_view((), jax.ShapeDtypeStruct(shape, jnp.float32))


def _matrices_of(x):
  """The (batch of) matrices that orthogonalize sees: a conv kernel through
  its matrix view, anything else as it is."""
  return _conv_view(x.shape).to_matrices(x) if x.ndim == 4 else x


def _apply(f, x):
  if x.ndim == 4:
    view = _conv_view(x.shape)
    return view.from_matrices(f(view.to_matrices(x)))
  return f(x)


def _random_leaf(shape, make):
  """``make(batch, m, n)`` matrices placed into a leaf of ``shape``."""
  if len(shape) == 4:
    view = _conv_view(shape)
    return view.from_matrices(jnp.asarray(make(1, *view.canonical_shape)))
  batch = shape[0] if len(shape) == 3 else 1
  return jnp.asarray(make(batch, *shape[-2:]).reshape(shape))


def _well_conditioned(rng, batch, m, n, cond):
  """``U diag(s) V^T`` with ``s`` log-uniform in ``[1/cond, 1]`` (both ends
  present)."""
  k = min(m, n)
  out = np.empty((batch, m, n))
  for i in range(batch):
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.exp(rng.uniform(-np.log(cond), 0.0, k))
    s[0], s[-1] = 1.0, (1.0 / cond if k > 1 else 1.0)
    out[i] = (u * s) @ v.T
  return out


def _scale_range(dtype):
  # float16 keeps the entries (about scale / sqrt(m n)) normal and finite.
  return (-2.0, 3.0) if dtype == jnp.float16 else (-6.0, 6.0)


def _svals(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


@SETTINGS
@given(shape=leaf_shapes(), dtype=st.sampled_from(DTYPES),
       ns_coeffs=st.sampled_from(("quintic", "polar_express")),
       ns_dtype=st.sampled_from((None, "float32", "bfloat16")),
       log_scale=st.floats(0.0, 1.0), cond=st.floats(1.0, 10.0),
       seed=st.integers(0, 2**31 - 1))
@pytest.mark.integration
def test_well_conditioned_input_lands_in_the_band(
    shape, dtype, ns_coeffs, ns_dtype, log_scale, cond, seed):
  _, shape = shape
  rng = np.random.default_rng(seed)
  lo_s, hi_s = _scale_range(dtype)
  scale = 10.0 ** (lo_s + (hi_s - lo_s) * log_scale)
  x = _random_leaf(shape, lambda b, m, n: _well_conditioned(
      rng, b, m, n, cond) * scale).astype(jnp.float32).astype(dtype)
  out = _apply(_orthogonalize(ns_coeffs, ns_dtype, "auto"), x)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
  sv = _svals(_matrices_of(out.astype(jnp.float32)))
  lo, hi = BAND[ns_coeffs, dtype_name(ns_dtype)]
  assert sv.min() >= lo and sv.max() <= hi, (sv.min(), sv.max())


@SETTINGS
@given(shape=leaf_shapes(), dtype=st.sampled_from(DTYPES),
       ns_coeffs=st.sampled_from(("quintic", "polar_express")),
       form=st.sampled_from(("auto", "standard", "gram")),
       zero_rows=st.integers(0, 3), log_scale=st.floats(-1.0, 1.0),
       seed=st.integers(0, 2**31 - 1))
@pytest.mark.integration
def test_any_input_gives_finite_bounded_output(
    shape, dtype, ns_coeffs, form, zero_rows, log_scale, seed):
  # Gaussian input, possibly rank-deficient or all zero, at scales up to
  # 1e+-30 (float32 / bfloat16) or the float16 range.
  _, shape = shape
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape)
  x[..., :zero_rows, :] = 0.0
  span = 3.0 if dtype == jnp.float16 else 30.0
  x = jnp.asarray(x * 10.0 ** (span * log_scale), jnp.float32).astype(dtype)
  # The bound holds for float32 arithmetic (and the Gram form needs it).
  out = _apply(_orthogonalize(ns_coeffs, "float32", form), x)
  assert out.shape == x.shape and out.dtype == x.dtype
  out32 = out.astype(jnp.float32)
  assert bool(jnp.all(jnp.isfinite(out32)))
  assert _svals(_matrices_of(out32)).max() <= UPPER[ns_coeffs] + 0.01
  if not bool(jnp.any(x != 0)):
    assert not bool(jnp.any(out32 != 0))


@SETTINGS
@given(shape=leaf_shapes(), log_scale=st.floats(-30.0, 30.0),
       ns_coeffs=st.sampled_from(("quintic", "polar_express")),
       seed=st.integers(0, 2**31 - 1))
def test_output_does_not_depend_on_input_scale(shape, log_scale, ns_coeffs,
                                               seed):
  _, shape = shape
  x = np.random.default_rng(seed).standard_normal(shape)
  f = _orthogonalize(ns_coeffs, "float32", "auto")
  unit = _apply(f, jnp.asarray(x, jnp.float32))
  scaled = _apply(f, jnp.asarray(x * 10.0**log_scale, jnp.float32))
  np.testing.assert_allclose(np.asarray(scaled), np.asarray(unit), atol=2e-5)


@pytest.mark.parametrize("ns_coeffs", ["quintic", "polar_express"])
def test_band_is_tight(ns_coeffs):
  # The documented band is reached, not just a bound: diag(x, sqrt(1 - x^2))
  # has unit Frobenius norm, so its singular values sweep the scalar map over
  # x in [0.01, 1].
  x = np.linspace(0.01, np.sqrt(1 - 0.01**2), 4001)
  mats = np.zeros((x.size, 2, 2))
  mats[:, 0, 0], mats[:, 1, 1] = x, np.sqrt(1 - x**2)
  out = np.asarray(_orthogonalize(ns_coeffs, "float32", "standard")(
      jnp.asarray(mats, jnp.float32)))
  sv = np.concatenate([out[:, 0, 0], out[:, 1, 1]])
  lo, hi = BAND[ns_coeffs, "float32"]
  assert lo <= sv.min() < lo + 0.01 and hi - 0.01 < sv.max() <= hi
