"""Newton–Schulz iterations: the polar factor ``U V^T`` and ``Y^{-1/2}``.

:class:`NewtonSchulz` is the one configuration of the orthogonalisation
(steps, coefficients, compute dtype, matmul precision, ``eps``, speed
tuning), validated once when it is built; :func:`orthogonalize` is its
functional form. :func:`inverse_sqrt` is the coupled iteration MomMuon uses.

Precision contract: with a float32 compute dtype every matmul passes
``precision=jax.lax.Precision.HIGHEST``, so float32 means float32 on GPUs and
TPUs too (whose default runs float32 products at TF32 or bfloat16-pass
precision); with bfloat16 or float16 the inputs of each product are in that
dtype and it accumulates in float32. ``dtype=None`` is float32 on CPU and
bfloat16 on GPU and TPU.

References:
  Jordan et al., "Muon: An optimizer for hidden layers in neural networks",
  2024. https://kellerjordan.github.io/posts/muon/

  Amsel, Persson, Musco, Gower, "The Polar Express: Optimal Matrix Sign
  Methods and Their Application to the Muon Algorithm", 2025.
  https://arxiv.org/abs/2505.16932

  Ma et al., "SWAN: SGD with Normalization and Whitening Enables Stateless
  LLM Training", 2024. https://arxiv.org/abs/2412.13148
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from optax_muon import _checks, _tuning
from optax_muon._tuning import NsForm, Tuning

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
    ValueError: for an unknown preset name, a malformed table, a table
      shorter than ``ns_steps`` or ``ns_steps`` that is not an int >= 1.
  """
  ns_steps = _checks.static_int(ns_steps, "ns_steps", low=1)
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
  try:
    rows = tuple(tuple(float(v) for v in row) for row in ns_coeffs)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"ns_coeffs must be a preset name or (a, b, c) rows of numbers, got "
        f"{ns_coeffs!r}.") from e
  if any(len(row) != 3 for row in rows):
    raise ValueError(
        f"ns_coeffs rows must be (a, b, c) triples, got {ns_coeffs!r}.")
  if len(rows) < ns_steps:
    raise ValueError(
        f"ns_coeffs has {len(rows)} rows but ns_steps={ns_steps}: give one "
        "(a, b, c) row per step.")
  return rows[:ns_steps], 1.0


def default_ns_dtype() -> jnp.dtype:
  """float32 on CPU; bfloat16 (with float32 accumulation) on GPU and TPU."""
  return jnp.dtype(jnp.float32 if _tuning._on_cpu() else jnp.bfloat16)


def _precision_for(cdtype) -> jax.lax.Precision:
  """HIGHEST for 32-bit or wider compute (float32 means float32 on every
  backend); DEFAULT for narrower dtypes, whose inputs are already rounded."""
  return (jax.lax.Precision.HIGHEST if jnp.finfo(cdtype).bits >= 32
          else jax.lax.Precision.DEFAULT)


def _matmul(a: jax.Array, b: jax.Array,
            precision: jax.lax.Precision) -> jax.Array:
  """Matmul accumulating in at least float32; result in float32 or wider."""
  acc = jnp.promote_types(a.dtype, jnp.float32)
  return jnp.matmul(a, b, preferred_element_type=acc, precision=precision)


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


def _symmetric_matmul(a: jax.Array, b: jax.Array, blocks: int,
                      precision: jax.lax.Precision) -> jax.Array:
  """``a @ b`` for ``m x m`` matrices whose product is known to be symmetric.

  With ``blocks = k > 1`` only the block upper triangle is computed -- row
  block ``i`` of ``a`` times the columns of ``b`` from block ``i`` on -- and
  the blocks below the diagonal are mirrors of those above:
  ``(k + 1) / (2 k)`` of the flops (the BLAS ``syrk`` idea, for a product
  of two commuting symmetric matrices).
  """
  if blocks <= 1:
    return _matmul(a, b, precision)
  return _symmetric_blocks(
      lambda lo, hi: _matmul(a[..., lo:hi, :], b[..., :, lo:], precision),
      a.shape[-2], blocks)


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int],
         precision: jax.lax.Precision, out_dtype) -> jax.Array:
  """``a . b`` contracting axis ``contract[0]`` of ``a`` (-1 or -2) with axis
  ``contract[1]`` of ``b``, batched over every leading axis.

  The product accumulates in at least float32 (``preferred_element_type``)
  and is cast to ``out_dtype`` at once, so a bfloat16 iteration writes no
  float32 matrix between products. Contracting over the right axes with
  ``lax.dot_general`` replaces every transpose (``X X^T`` of a wide matrix,
  ``X^T X`` of a tall one, ``X P`` for a tall ``X``) by a layout choice of
  the matmul itself.
  """
  nb = a.ndim - 2
  batch = tuple(range(nb))
  dims = (((a.ndim + contract[0],), (b.ndim + contract[1],)), (batch, batch))
  acc = jnp.promote_types(a.dtype, jnp.float32)
  out = jax.lax.dot_general(a, b, dims, precision=precision,
                            preferred_element_type=acc)
  return out.astype(out_dtype)


def _symmetric_blocks(block_row, k: int, blocks: int) -> jax.Array:
  """Assembles a symmetric ``k x k`` matrix from its block upper triangle.

  ``block_row(lo, hi)`` returns rows ``lo:hi`` restricted to the columns
  ``lo:`` (the BLAS ``syrk`` idea: ``(blocks + 1) / (2 blocks)`` of a full
  product's flops); the blocks below the diagonal are mirrors.
  """
  cut = [i * k // blocks for i in range(blocks)] + [k]
  upper = [block_row(cut[i], cut[i + 1]) for i in range(blocks)]
  block_rows = []
  for i in range(blocks):
    mirrored = [_swap(upper[j][..., :, cut[i] - cut[j]:cut[i + 1] - cut[j]])
                for j in range(i)]
    block_rows.append(jnp.concatenate(mirrored + [upper[i]], axis=-1))
  return jnp.concatenate(block_rows, axis=-2)


def _gram(x: jax.Array, tall: bool, blocks: int,
          precision: jax.lax.Precision, out_dtype) -> jax.Array:
  """``X X^T`` of a wide ``X`` or ``X^T X`` of a tall one (the small side),
  without transposing ``X``; ``blocks > 1``: block upper triangle only."""
  contract = (-2, -2) if tall else (-1, -1)
  if blocks <= 1:
    return _dot(x, x, contract, precision, out_dtype)
  axis = -1 if tall else -2
  k = x.shape[axis]

  def block_row(lo, hi):
    rows = jax.lax.slice_in_dim(x, lo, hi, axis=x.ndim + axis)
    cols = jax.lax.slice_in_dim(x, lo, k, axis=x.ndim + axis)
    return _dot(rows, cols, contract, precision, out_dtype)

  return _symmetric_blocks(block_row, k, blocks)


def _sym_product(a: jax.Array, b: jax.Array, blocks: int,
                 precision: jax.lax.Precision, out_dtype) -> jax.Array:
  """``a @ b`` for ``k x k`` matrices whose product is symmetric
  (polynomials in one Gram matrix commute); ``blocks > 1``: block upper
  triangle only."""
  if blocks <= 1:
    return _dot(a, b, (-1, -2), precision, out_dtype)
  k = a.shape[-1]
  return _symmetric_blocks(
      lambda lo, hi: _dot(a[..., lo:hi, :], b[..., :, lo:], (-1, -2),
                          precision, out_dtype), k, blocks)


def _apply(p: jax.Array, x: jax.Array, tall: bool,
           precision: jax.lax.Precision, out_dtype) -> jax.Array:
  """``P X`` for a wide ``X``, ``X P`` for a tall one (``P`` symmetric, so
  this is ``(P X^T)^T`` without a transpose)."""
  if tall:
    return _dot(x, p, (-1, -2), precision, out_dtype)
  return _dot(p, x, (-1, -2), precision, out_dtype)


def _segments(steps: int, restarts: Sequence[int]) -> list[tuple[int, int]]:
  """``[(start, stop), ...]`` step ranges between Gram-form restarts."""
  cuts = sorted({r for r in restarts if 0 < r < steps})
  bounds = [0] + cuts + [steps]
  return list(zip(bounds[:-1], bounds[1:]))


def ns_flops(m: int, n: int, ns_steps: int, form: str = "standard",
             restarts: Sequence[int] = ()) -> int:
  """Flops of orthogonalising one ``m x n`` matrix (``m <= n`` after the
  transpose): ``4 m^2 n + 2 m^3`` per standard step. The Gram form costs
  ``4 m^2 n`` (``X X^T`` and ``Q X``) per segment between restarts plus
  ``2 m^3 (4 s - 3)`` for a segment of ``s`` steps; ``restarts`` lists the
  steps after which it restarts (none: one segment)."""
  m, n = min(m, n), max(m, n)
  if form == "gram":
    return sum(4 * m * m * n + 2 * m**3 * (4 * (stop - start) - 3)
               for start, stop in _segments(ns_steps, restarts))
  return ns_steps * (4 * m * m * n + 2 * m**3)


@dataclasses.dataclass(frozen=True)
class NewtonSchulz:
  r"""One Newton–Schulz orthogonalisation, validated once; call it on arrays.

  ``NewtonSchulz(steps=5)(x)`` approximates the polar factor ``U V^T`` of
  each matrix ``G = U S V^T`` in an array of shape ``(..., m, n)`` (every
  leading axis is a batch axis). Per matrix:

  1. if ``m > n``, transpose (so the Gram matrix is the small one);
  2. ``X = G / (s ||G||_F + eps)`` with ``s = 1.02`` for Polar Express and 1
     otherwise;
  3. for each step ``k``: ``A = X X^T;  B = b_k A + c_k A A;  X = a_k X + B X``;
  4. undo the transpose and cast back to the input dtype.

  (That is the mathematics; the code never transposes -- a tall matrix is
  iterated as ``A = X^T X; X = X P`` -- computes ``a X + B X`` as one
  product ``(a I + B) X``, reads ``||G||_F`` off the trace of the first
  ``A`` and, in bfloat16 or float16, keeps every ``m x n`` iterate in that
  dtype between products.)

  The odd quintic ``p(s) = a s + b s^3 + c s^5`` is applied to every singular
  value; ``"quintic"`` (Jordan et al., 2024) pushes them into about
  ``[0.7, 1.2]`` in 5 steps, ``"polar_express"`` (Amsel et al., 2025) uses a
  minimax-optimal polynomial per step and converges towards 1.

  Measured band with 5 steps, for input whose singular values are all at
  least ``0.01 ||G||_F`` (e.g. condition number <= 10 and
  ``min(m, n) <= 100``): with float32 compute, ``"quintic"`` gives singular
  values in ``[0.68, 1.14]`` and ``"polar_express"`` in ``[0.85, 1.15]``
  (the scalar maps' own ranges); with bfloat16 compute, ``[0.64, 1.16]`` and
  ``[0.79, 1.15]``. Smaller singular values come out smaller: a singular
  value ``s`` of the normalised input gives about ``3.44^5 s`` with
  ``"quintic"``. ``benchmarks/ns_band.py`` measures these bands and
  ``tests/test_properties.py`` checks them.

  ``eps`` guards the division relative to the matrix's largest entry (it is
  divided out first), so the result is the same for ``G`` and ``1e-6 G`` or
  ``1e6 G``, and an all-zero matrix gives zeros. Non-finite input gives
  non-finite output.

  Attributes:
    steps: number of Newton–Schulz steps (an int >= 1).
    coeffs: ``"quintic"`` (Keller Jordan's ``(3.4445, -4.7750, 2.0315)`` at
      every step), ``"polar_express"`` (its 5-step table, then
      ``(1.875, -1.25, 0.375)``) or a sequence of ``(a, b, c)`` rows, one per
      step.
    dtype: compute dtype of the iteration; ``None`` is float32 on CPU and
      bfloat16 on GPU and TPU. Products always accumulate in float32.
    precision: matmul precision; ``None`` is ``Precision.HIGHEST`` for a
      float32 (or wider) compute dtype -- float32 means float32 on every
      backend -- and ``DEFAULT`` for narrower ones. Pass ``DEFAULT`` with
      float32 to allow TF32 on GPUs.
    eps: relative guard of the normalisation.
    tuning: speed choices (:class:`Tuning`: the Gram form and its restarts,
      symmetric block products); they change no result beyond rounding.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax_muon as om
    >>> g = jax.random.normal(jax.random.key(0), (64, 256))
    >>> o = om.NewtonSchulz(steps=5, dtype=jnp.float32)(g)
    >>> s = jnp.linalg.svd(o, compute_uv=False)
    >>> bool(0.6 < s.min() and s.max() < 1.25)
    True
  """

  steps: int = 5
  coeffs: NsCoeffs = "quintic"
  dtype: DTypeLike | None = None
  precision: jax.lax.Precision | None = None
  eps: float = 1e-7
  tuning: Tuning = _tuning.DEFAULT

  def __post_init__(self):
    rows, norm_scale = ns_coefficients(self.coeffs, self.steps)
    set_ = object.__setattr__
    set_(self, "steps", _checks.static_int(self.steps, "ns_steps", low=1))
    set_(self, "coeffs", self.coeffs if isinstance(self.coeffs, str)
         else rows)
    set_(self, "dtype", _checks.floating_dtype(self.dtype, "ns_dtype"))
    if self.precision is not None and not isinstance(
        self.precision, jax.lax.Precision):
      set_(self, "precision", jax.lax.Precision(self.precision))
    if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
      raise ValueError(f"eps must be a float >= 0, got {self.eps!r}.")
    set_(self, "tuning", _tuning.resolve(self.tuning))
    set_(self, "_rows", rows)
    set_(self, "_norm_scale", norm_scale)

  @property
  def rows(self) -> tuple[Coefficients, ...]:
    """One ``(a, b, c)`` row per step."""
    return self._rows

  @property
  def norm_scale(self) -> float:
    """Factor on ``||G||_F`` in the normalisation (1.02 for Polar Express)."""
    return self._norm_scale

  def compute_dtype(self) -> jnp.dtype:
    """The iteration's dtype, ``dtype`` or the backend's default."""
    return self.dtype if self.dtype is not None else default_ns_dtype()

  def matmul_precision(self) -> jax.lax.Precision:
    """``precision``, or the one the compute dtype implies."""
    if self.precision is not None:
      return self.precision
    return _precision_for(self.compute_dtype())

  def restarts(self) -> tuple[int, ...]:
    """Steps after which the Gram form restarts (``Tuning.restarts_for``)."""
    return self.tuning.restarts_for(self.compute_dtype(), self.steps)

  def form_for(self, m: int, n: int) -> str:
    """``"standard"`` or ``"gram"`` for an ``m x n`` matrix."""
    form = self.tuning.form
    if form != "auto":
      return form
    if jnp.finfo(self.compute_dtype()).bits < 32:
      # Half precision: the Gram form with restarts (Dao AI Lab), where the
      # backend's default allows it (Tuning.gram_in_half).
      if not self.tuning.half_gram():
        return "standard"
    elif (self.matmul_precision() != jax.lax.Precision.HIGHEST
          or self.steps > self.tuning.gram_max_steps):
      # The Gram form squares the condition number of what it iterates on:
      # without restarts, only where the arithmetic really is float32.
      return "standard"
    gram = ns_flops(m, n, self.steps, "gram", self.restarts())
    return ("gram" if gram < self.tuning.gram_max_flops_ratio
            * ns_flops(m, n, self.steps) else "standard")

  def __call__(self, x: ArrayLike) -> jax.Array:
    """Orthogonalises each ``m x n`` matrix of ``x``; same shape and dtype."""
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(
          f"orthogonalize needs an array of shape (..., m, n), got {x.shape}.")
    out_dtype, shape = x.dtype, x.shape
    if x.ndim > 2 and math.prod(shape[:-2]) == 1:
      # One matrix with leading axes of size 1 (a loop over a stack hands its
      # direction such (1, m, n) slices): as a plain matrix, XLA's CPU code
      # for the iteration is 7-17% faster on the GPT-like tree's shapes.
      x = x.reshape(shape[-2:])
    m, n = x.shape[-2:]
    tall = m > n
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    # One pass over G: divide by its largest entry (so the squares below
    # neither overflow nor underflow) and cast to the compute dtype. The
    # Frobenius norm then comes from the trace of the first Gram matrix.
    x = _scaled_by_max(x)[0].astype(self.compute_dtype())
    if self.form_for(min(m, n), max(m, n)) == "gram":
      x = self._gram_iteration(x, tall)
    else:
      x = self._standard_iteration(x, tall)
    return x.astype(out_dtype).reshape(shape)

  def _first_gram(self, x: jax.Array, tall: bool, blocks: int):
    """``(A_0, 1 / d)`` for ``X_0 = x / d``, ``d = s ||x||_F + eps``, with
    ``||x||_F^2 = tr(x x^T)`` read off the Gram matrix (no pass of its own).
    ``A_0 = x x^T / d^2`` is in the compute dtype."""
    prec = self.matmul_precision()
    gram = _gram(x, tall, blocks, prec, jnp.promote_types(x.dtype,
                                                          jnp.float32))
    d = self.norm_scale * jnp.sqrt(jnp.trace(gram, axis1=-2, axis2=-1))[
        ..., None, None] + self.eps
    return (gram / (d * d)).astype(x.dtype), 1.0 / d

  def _poly(self, a, b, c, gram, blocks, scale=None):
    """``P = a I + b A + c A^2`` in the compute dtype (times ``scale``)."""
    cdtype, prec = gram.dtype, self.matmul_precision()
    acc = jnp.promote_types(cdtype, jnp.float32)
    eye = jnp.eye(gram.shape[-1], dtype=acc)
    poly = a * eye + b * gram.astype(acc) + c * _sym_product(
        gram, gram, blocks, prec, acc)
    if scale is not None:
      poly = poly * scale
    return poly.astype(cdtype)

  def _standard_iteration(self, x: jax.Array, tall: bool) -> jax.Array:
    """``A = X X^T; P = a I + b A + c A^2; X = P X`` per step.

    ``x`` is the input divided by its largest entry, in the compute dtype.
    ``a X + (b A + c A^2) X`` is one product ``(a I + b A + c A^2) X``; the
    normalisation ``1 / d`` is folded into the first step's ``P``. Every
    product accumulates in float32 and its result is cast to the compute
    dtype at once: a bfloat16 iteration keeps its ``m x n`` iterates in
    bfloat16 from the first product to the last. A tall matrix is iterated
    as ``A = X^T X; X = X P`` (no transposes).
    """
    cdtype, prec = x.dtype, self.matmul_precision()
    blocks = self.tuning.blocks_for(min(x.shape[-2:]))
    gram, inv_d = self._first_gram(x, tall, blocks)
    for k, (a, b, c) in enumerate(self.rows):
      if k:
        gram = _gram(x, tall, blocks, prec, cdtype)
      poly = self._poly(a, b, c, gram, blocks, inv_d if k == 0 else None)
      x = _apply(poly, x, tall, prec, cdtype)
    return x

  def _gram_iteration(self, x: jax.Array, tall: bool) -> jax.Array:
    """The same polynomial, iterated on the small ``m x m`` Gram matrix.

    ``x`` is the input divided by its largest entry, in the compute dtype,
    not yet normalised: ``X_0 = x / (norm_scale ||x||_F + eps)``. Within a
    segment every iterate is ``X_k = Q_k X_s`` (``X_s``: the iterate at the
    segment's start) with ``Q_k`` a polynomial in ``A_s = X_s X_s^T``, so
    all the ``m x m`` matrices commute and ``P_k = a I + b A_k + c A_k^2;
    Q_{k+1} = P_k Q_k; A_{k+1} = P_k A_k P_k``. The ``m x n`` matrix is
    touched twice per segment (``A_s`` and ``Q X_s``): a segment of ``s``
    steps costs ``4 m^2 n + 2 m^3 (4 s - 3)`` flops instead of
    ``s (4 m^2 n + 2 m^3)``.

    Squaring ``X`` squares its condition number, and in half precision the
    Gram iterates drift (spurious negative eigenvalues, eigenvectors that
    wander; Dao AI Lab). A *restart* -- ``X = Q X``, then a fresh
    ``A = X X^T`` and ``Q = I`` -- after the steps listed by
    :meth:`restarts` (after step 3 of 5 for bfloat16 and float16 by default)
    bounds that drift; float32 runs one segment.

    References:
      Dao, Zhang, Amsel, Chen, "Gram Newton-Schulz: A Fast, Hardware-Aware
      Newton-Schulz Algorithm for Muon", Dao AI Lab blog, 2026.
      https://tridao.me/blog/2026/gram-newton-schulz/
    """
    cdtype, prec = x.dtype, self.matmul_precision()
    blocks = self.tuning.blocks_for(min(x.shape[-2:]))
    for start, stop in _segments(self.steps, self.restarts()):
      if start == 0:
        gram, scale = self._first_gram(x, tall, blocks)
      else:
        gram, scale = _gram(x, tall, blocks, prec, cdtype), None
      q = None
      for k in range(start, stop):
        a, b, c = self.rows[k]
        poly = self._poly(a, b, c, gram, blocks)
        q = poly if q is None else _sym_product(poly, q, blocks, prec, cdtype)
        if k + 1 < stop:
          gram = _sym_product(_sym_product(poly, gram, blocks, prec, cdtype),
                              poly, blocks, prec, cdtype)
      if scale is not None:
        q = (q * scale).astype(cdtype)
      x = _apply(q, x, tall, prec, cdtype)
    return x


def orthogonalize(
    x: ArrayLike,
    *,
    ns_steps: int = 5,
    ns_coeffs: NsCoeffs = "quintic",
    eps: float = 1e-7,
    dtype: DTypeLike | None = None,
    form: NsForm = "auto",
    precision: jax.lax.Precision | None = None,
) -> jax.Array:
  r"""Approximates the polar factor ``U V^T`` of each matrix ``G = U S V^T``.

  The functional form of :class:`NewtonSchulz` (which documents the
  iteration, its measured singular-value band and the precision contract):
  ``orthogonalize(x, ns_steps=k, ...) == NewtonSchulz(steps=k, ...)(x)``.

  Args:
    x: array of shape ``(..., m, n)``; each ``m x n`` slice is one matrix.
    ns_steps: number of Newton–Schulz steps.
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a sequence of
      ``(a, b, c)`` rows, one per step.
    eps: relative guard of the normalisation.
    dtype: compute dtype. ``None``: float32 on CPU, bfloat16 on GPU/TPU;
      products always accumulate in float32.
    form: ``"standard"``, ``"gram"`` or ``"auto"`` (see :class:`Tuning`).
    precision: matmul precision; ``None``: HIGHEST for float32 compute.

  Returns:
    An array of ``x``'s shape and dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax_muon as om
    >>> g = jax.random.normal(jax.random.key(0), (3, 32, 48))  # 3 matrices
    >>> om.orthogonalize(g, ns_steps=5).shape
    (3, 32, 48)
  """
  return NewtonSchulz(
      steps=ns_steps, coeffs=ns_coeffs, dtype=dtype, precision=precision,
      eps=eps, tuning=Tuning(form=form))(x)


def inverse_sqrt(y: jax.Array, ns_steps: int) -> jax.Array:
  """``~ Y^{-1/2}`` of symmetric ``(..., k, k)`` matrices, by the coupled
  Newton–Schulz iteration of SWAN, always in float32 (HIGHEST precision).

  Starting from ``Z = I``: ``T = 3 I - Z Y;  Y = T Y / 2;  Z = T Z / 2``,
  ``ns_steps`` times. Converges for eigenvalues of ``Y`` in ``(0, 3)``; an
  eigenvalue near 0 grows ``Z`` by at most ``1.5`` per step.

  The coupled iteration amplifies rounding: in bfloat16 it diverges to NaN
  within a few training steps (measured on an MLP), so it runs in float32
  on every backend. Its matrices are ``k x k`` at a matrix's small side, so
  this costs little next to orthogonalisation.

  References:
    Ma et al., "SWAN: SGD with Normalization and Whitening Enables
    Stateless LLM Training", 2024. https://arxiv.org/abs/2412.13148
  """
  ns_steps = _checks.static_int(ns_steps, "ns_steps", low=1)
  prec = jax.lax.Precision.HIGHEST
  k = y.shape[-1]
  eye = jnp.eye(k, dtype=jnp.float32)
  y = y.astype(jnp.float32)
  z = jnp.broadcast_to(eye, y.shape)
  for _ in range(ns_steps):
    t = 3 * eye - _matmul(z, y, prec)
    y = 0.5 * _matmul(y, t, prec)
    z = 0.5 * _matmul(t, z, prec)
  return z
