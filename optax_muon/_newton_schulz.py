"""Newton–Schulz orthogonalisation: ``G = U S V^T  ->  ~ U V^T``.

References:
  Jordan et al., "Muon: An optimizer for hidden layers in neural networks",
  2024. https://kellerjordan.github.io/posts/muon/

  Amsel, Persson, Musco, Gower, "The Polar Express: Optimal Matrix Sign
  Methods and Their Application to the Muon Algorithm", 2025.
  https://arxiv.org/abs/2505.16932
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal, Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

Coefficients = tuple[float, float, float]
NsCoeffs = Union[str, Sequence[Sequence[float]]]

#: Keller Jordan's quintic, used at every step. Deliberately non-convergent:
#: singular values land in about [0.7, 1.2].
QUINTIC: Coefficients = (3.4445, -4.7750, 2.0315)

#: The 5-step Polar Express table used by the modded-nanogpt record (safety
#: factor folded in); it expects the input normalised by 1.02 * ||X||_F.
POLAR_EXPRESS: tuple[Coefficients, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
#: Steps beyond the Polar Express table use this convergent quintic.
POLAR_EXPRESS_TAIL: Coefficients = (1.875, -1.25, 0.375)
POLAR_EXPRESS_SAFETY = 1.02

NsForm = Literal["auto", "standard", "gram"]


def ns_coefficients(
    ns_coeffs: NsCoeffs = "quintic", ns_steps: int = 5
) -> tuple[tuple[Coefficients, ...], float]:
  """Resolves a coefficient preset into one ``(a, b, c)`` row per step.

  Args:
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a sequence of
      ``(a, b, c)`` rows, one per step.
    ns_steps: number of Newton–Schulz steps. For a user table it must not
      exceed the table's length; only the first ``ns_steps`` rows are used.

  Returns:
    ``(rows, norm_scale)``: the coefficient rows and the factor the Frobenius
    norm is multiplied by before dividing (1.02 for Polar Express, else 1).

  Raises:
    ValueError: for an unknown preset name, a malformed table or a table
      shorter than ``ns_steps``.
  """
  ns_steps = _static_int(ns_steps, "ns_steps")
  if ns_steps < 1:
    raise ValueError(f"ns_steps must be >= 1, got {ns_steps}.")
  if isinstance(ns_coeffs, str):
    if ns_coeffs == "quintic":
      return (QUINTIC,) * ns_steps, 1.0
    if ns_coeffs == "polar_express":
      rows = POLAR_EXPRESS[:ns_steps] + (POLAR_EXPRESS_TAIL,) * max(
          0, ns_steps - len(POLAR_EXPRESS))
      return rows, POLAR_EXPRESS_SAFETY
    raise ValueError(
        f"Unknown ns_coeffs {ns_coeffs!r}: use 'quintic', 'polar_express' or "
        "a sequence of (a, b, c) rows, one per step.")
  rows = tuple(tuple(float(v) for v in row) for row in ns_coeffs)
  if any(len(row) != 3 for row in rows):
    raise ValueError(
        f"ns_coeffs rows must be (a, b, c) triples, got {ns_coeffs!r}.")
  if len(rows) < ns_steps:
    raise ValueError(
        f"ns_coeffs has {len(rows)} rows but ns_steps={ns_steps}: give one "
        "(a, b, c) row per step.")
  return rows[:ns_steps], 1.0


def _static_int(value, name: str) -> int:
  try:
    return int(value)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise ValueError(
        f"{name} must be a Python int known at trace time, got {value!r}. "
        "Under optax.inject_hyperparams pass "
        f"static_args=({name!r}, ...).") from e


def default_ns_dtype() -> jnp.dtype:
  """float32 on CPU; bfloat16 (with float32 accumulation) on GPU and TPU."""
  return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu"
                   else jnp.bfloat16)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """Matmul accumulating in at least float32; result in float32 or wider."""
  acc = jnp.promote_types(a.dtype, jnp.float32)
  return jnp.matmul(a, b, preferred_element_type=acc)


def _swap(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def _scaled_by_max(x: jax.Array):
  amax = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
  return x / jnp.where(amax > 0, amax, jnp.ones_like(amax)), amax


def frobenius_norm(x: jax.Array) -> jax.Array:
  """Per-matrix Frobenius norm of ``(..., m, n)``, shape ``(..., 1, 1)``,
  in float32 or wider, computed without overflow or underflow of the
  squares (the largest entry is divided out first)."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  xs, amax = _scaled_by_max(x)
  return amax * jnp.sqrt(jnp.sum(jnp.square(xs), axis=(-2, -1),
                                 keepdims=True))


def normalize_frobenius(x: jax.Array, eps: float = 1e-7,
                        norm_scale: float = 1.0) -> jax.Array:
  """Returns ``x / (norm_scale * ||x||_F + eps)`` per matrix, overflow-safe.

  The matrix is first divided by its largest absolute entry, so the squared
  norm neither overflows (entries near 1e30) nor underflows (entries near
  1e-30), and ``eps`` acts relative to that entry rather than as an absolute
  floor: the result does not depend on the input's scale, and an all-zero
  matrix maps to zero.
  """
  xs, _ = _scaled_by_max(x)
  sq = jnp.sum(jnp.square(xs.astype(jnp.float32)), axis=(-2, -1),
               keepdims=True)
  return xs / (norm_scale * jnp.sqrt(sq) + eps).astype(x.dtype)


def _symmetric_matmul(a: jax.Array, b: jax.Array, blocks: int) -> jax.Array:
  """``a @ b`` for ``m x m`` matrices whose product is known to be symmetric.

  With ``blocks = k > 1`` only the block upper triangle is computed -- row
  block ``i`` of ``a`` times the columns of ``b`` from block ``i`` on -- and
  the blocks below the diagonal are mirrors of those above:
  ``(k + 1) / (2 k)`` of the flops (the BLAS ``syrk`` idea, for a product
  of two commuting symmetric matrices).
  """
  if blocks <= 1:
    return _matmul(a, b)
  m = a.shape[-2]
  cut = [i * m // blocks for i in range(blocks)] + [m]
  upper = [_matmul(a[..., cut[i]:cut[i + 1], :], b[..., :, cut[i]:])
           for i in range(blocks)]
  block_rows = []
  for i in range(blocks):
    mirrored = [_swap(upper[j][..., :, cut[i] - cut[j]:cut[i + 1] - cut[j]])
                for j in range(i)]
    block_rows.append(jnp.concatenate(mirrored + [upper[i]], axis=-1))
  return jnp.concatenate(block_rows, axis=-2)


#: Symmetric products (``X X^T`` and ``A A`` in the standard form, every
#: ``m x m`` product of the Gram form) use :func:`_symmetric_matmul` with
#: this many blocks on CPU for ``m >= _SYMMETRIC_MIN_SIZE``: about 10% off
#: the Gram form at ``m = 384``, 5% off the standard form of a square matrix;
#: 2, 3, 6 or 8 blocks did worse (benchmarks/README.md).
_SYMMETRIC_BLOCKS = 4
_SYMMETRIC_MIN_SIZE = 256


def _symmetric_blocks(m: int) -> int:
  if jax.default_backend() == "cpu" and m >= _SYMMETRIC_MIN_SIZE:
    return _SYMMETRIC_BLOCKS
  return 1


def _standard_iteration(x, rows):
  """``A = X X^T; B = b A + c A A; X = a X + B X`` on wide ``x``.

  ``X X^T`` and ``A A`` are symmetric: on CPU they are computed by blocks
  (:func:`_symmetric_matmul`).
  """
  cdtype = x.dtype
  sym = functools.partial(_symmetric_matmul,
                          blocks=_symmetric_blocks(x.shape[-2]))
  for a, b, c in rows:
    gram = sym(x, _swap(x)).astype(cdtype)
    poly = (b * gram + c * sym(gram, gram)).astype(cdtype)
    x = (a * x + _matmul(poly, x)).astype(cdtype)
  return x


def _gram_iteration(x, rows, norm_scale=1.0, eps=0.0):
  """The same polynomial, iterated on the small ``m x m`` Gram matrix.

  ``x`` is not yet normalised: ``X_0 = x / (norm_scale ||x||_F + eps)``.
  Every iterate is ``X_k = Q_k X_0`` with ``Q_k`` a polynomial in
  ``A_0 = X_0 X_0^T``, so all the ``m x m`` matrices commute and
  ``P_k = a I + b A_k + c A_k^2;  Q_{k+1} = P_k Q_k;  A_{k+1} = P_k A_k P_k``.
  The ``m x n`` matrix is touched twice (``A_0`` and ``Q X_0``), which makes
  a step cost ``8 m^3`` flops instead of ``4 m^2 n + 2 m^3``. Every ``m x m``
  product is symmetric (a product of commuting symmetric matrices), which
  :func:`_symmetric_matmul` exploits on CPU.

  Squaring ``X`` squares its condition number: in float32 the smallest
  singular directions (below about ``1e-3`` of the largest) come out with
  errors near ``3e-4`` of the result's norm where the standard form's are
  near ``1e-5`` (bfloat16's are near ``5e-2``), so :func:`orthogonalize`
  uses this form only with float32 or wider arithmetic.

  References:
    "Gram Newton-Schulz: A Fast, Hardware-Aware Newton-Schulz Algorithm for
    Muon", Dao AI Lab blog, 2026 (iterating on ``X X^T``, exploiting the
    symmetry of its products, and restarts for half precision).
    https://tridao.me/blog/2026/gram-newton-schulz/
  """
  cdtype = x.dtype
  m = x.shape[-2]
  sym = functools.partial(_symmetric_matmul, blocks=_symmetric_blocks(m))
  eye = jnp.eye(m, dtype=jnp.float32)
  gram = _matmul(x, _swap(x))
  # X_0 = X / d with d = norm_scale ||X||_F + eps and ||X||_F^2 = tr(X X^T):
  # A_0 = X X^T / d^2, and 1 / d is folded into Q at the end.
  d = norm_scale * jnp.sqrt(jnp.trace(gram, axis1=-2, axis2=-1))[
      ..., None, None] + eps
  gram = gram / (d * d)
  q = None
  for k, (a, b, c) in enumerate(rows):
    g = gram.astype(cdtype)
    poly = a * eye + b * gram + c * sym(g, g)
    p = poly.astype(cdtype)
    q = poly if q is None else sym(p, q.astype(cdtype))
    if k + 1 < len(rows):
      gram = sym(sym(p, g).astype(cdtype), p)
  return _matmul((q / d).astype(cdtype), x).astype(cdtype)


def ns_flops(m: int, n: int, ns_steps: int, form: str = "standard") -> int:
  """Flops of orthogonalising one ``m x n`` matrix (``m <= n`` after the
  transpose): ``4 m^2 n + 2 m^3`` per standard step; for the Gram form
  ``4 m^2 n`` at the ends plus ``2 m^3 (4 ns_steps - 3)``."""
  m, n = min(m, n), max(m, n)
  if form == "gram":
    return 4 * m * m * n + 2 * m**3 * (4 * ns_steps - 3)
  return ns_steps * (4 * m * m * n + 2 * m**3)


_GRAM_MAX_STEPS = 6


def _pick_form(form: str, m: int, n: int, steps: int, cdtype) -> str:
  if form not in ("auto", "standard", "gram"):
    raise ValueError(f"form must be 'auto', 'standard' or 'gram', got {form!r}.")
  if form != "auto":
    return form
  # The Gram form squares the condition number of what it iterates on, so it
  # is used only with float32 (or wider) arithmetic, where it is exact enough.
  if jnp.finfo(cdtype).bits < 32:
    return "standard"
  # Its rounding errors grow with the number of steps: on an ill-conditioned
  # 384x1536 matrix in float32 it stays within 3e-3 of the standard form for
  # up to 6 steps and drifts (singular values up to 3) at 8
  # (benchmarks/orthogonality.py).
  if steps > _GRAM_MAX_STEPS:
    return "standard"
  gram, std = ns_flops(m, n, steps, "gram"), ns_flops(m, n, steps, "standard")
  return "gram" if gram < 0.9 * std else "standard"


def orthogonalize(
    x: ArrayLike,
    *,
    ns_steps: int = 5,
    ns_coeffs: NsCoeffs = "quintic",
    eps: float = 1e-7,
    dtype: DTypeLike | None = None,
    form: NsForm = "auto",
) -> jax.Array:
  r"""Approximates the polar factor ``U V^T`` of each matrix ``G = U S V^T``.

  Works on arrays of shape ``(..., m, n)``; every leading axis is a batch
  axis and each ``m x n`` slice is its own matrix. Per matrix:

  1. if ``m > n``, transpose (so the Gram matrix is the small one);
  2. ``X = G / (s ||G||_F + eps)`` with ``s = 1.02`` for Polar Express and 1
     otherwise;
  3. for each step ``k``: ``A = X X^T;  B = b_k A + c_k A A;  X = a_k X + B X``;
  4. undo the transpose and cast back to the input dtype.

  The odd quintic ``p(s) = a s + b s^3 + c s^5`` is applied to every singular
  value; ``"quintic"`` (Jordan et al., 2024) pushes them into about
  ``[0.7, 1.2]`` in 5 steps, ``"polar_express"`` (Amsel et al., 2025) uses a
  minimax-optimal polynomial per step and converges towards 1.

  Measured band with 5 steps, for input whose singular values are all at
  least ``0.01 ||G||_F`` (e.g. condition number <= 10 and
  ``min(m, n) <= 100``): with float32 compute, ``"quintic"`` gives singular
  values in ``[0.68, 1.14]`` and ``"polar_express"`` in ``[0.85, 1.15]``
  (the scalar maps' own ranges); with ``dtype=jnp.bfloat16`` compute,
  ``[0.64, 1.16]`` and ``[0.79, 1.15]``. A bfloat16 or float16 output adds
  its rounding (measured under 0.002 for ``min(m, n) <= 32``). Smaller
  singular values come out smaller: a singular value ``s`` of the
  normalised input gives about ``3.44^5 s`` with ``"quintic"``.
  ``benchmarks/ns_band.py`` measures these bands and
  ``tests/test_properties.py`` checks them.

  ``eps`` guards the division relative to the matrix's largest entry (it is
  divided out first), so the result is the same for ``G`` and ``1e-6 G`` or
  ``1e6 G``, and an all-zero matrix gives zeros. Non-finite input gives
  non-finite output.

  Args:
    x: array of shape ``(..., m, n)``.
    ns_steps: number of Newton–Schulz steps.
    ns_coeffs: ``"quintic"`` (Keller Jordan's ``(3.4445, -4.7750, 2.0315)``
      at every step), ``"polar_express"`` (its 5-step table, then
      ``(1.875, -1.25, 0.375)``) or a sequence of ``(a, b, c)`` rows, one per
      step.
    eps: relative guard of the normalisation.
    dtype: compute dtype of the iteration. ``None`` means float32 on CPU and
      bfloat16 on GPU/TPU; matmuls always accumulate in float32 or wider.
    form: ``"standard"`` iterates on the ``m x n`` matrix; ``"gram"`` iterates
      on the ``m x m`` Gram matrix and applies the product once (same
      polynomial, cheaper for ``n`` well above ``m``); ``"auto"`` picks the
      one with fewer flops, and the standard form whenever the compute dtype
      is narrower than 32 bits.

  Speed: the Gram form does about 0.6x the flops of the standard one on
  transformer shapes (``n = 3m`` to ``4m``) and, on CPU, its symmetric
  ``m x m`` products are computed by blocks (about 5/8 of their flops). A
  batch is one batched call; on CPU, large matrices run faster one at a time
  (``jax.lax.map(orthogonalize, x)``, which keeps each matrix's
  intermediates in cache), and the Muon-family optimizers do that for their
  stacks. Figures: benchmarks/README.md.

  Returns:
    An array of ``x``'s shape and dtype.
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(
        f"orthogonalize needs an array of shape (..., m, n), got {x.shape}.")
  rows, norm_scale = ns_coefficients(ns_coeffs, ns_steps)
  cdtype = jnp.dtype(dtype) if dtype is not None else default_ns_dtype()
  out_dtype = x.dtype
  shape = x.shape
  if x.ndim > 2 and math.prod(shape[:-2]) == 1:
    # One matrix with leading axes of size 1 (a loop over a stack hands its
    # direction such (1, m, n) slices): as a plain matrix, XLA's CPU code for
    # the iteration is 7-17% faster on the GPT-like tree's shapes.
    x = x.reshape(shape[-2:])
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = _swap(x)
  m, n = x.shape[-2:]
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if _pick_form(form, m, n, len(rows), cdtype) == "gram":
    # The Frobenius norm comes from the Gram matrix's trace: X is read once
    # for its largest entry and once by each end's matmul, nothing more.
    x = _gram_iteration(_scaled_by_max(x)[0].astype(cdtype), rows,
                        norm_scale, eps)
  else:
    x = normalize_frobenius(x, eps, norm_scale).astype(cdtype)
    x = _standard_iteration(x, rows)
  if transpose:
    x = _swap(x)
  return x.astype(out_dtype).reshape(shape)
