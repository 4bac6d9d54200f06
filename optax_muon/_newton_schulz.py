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
  m = a.shape[-2]
  cut = [i * m // blocks for i in range(blocks)] + [m]
  upper = [_matmul(a[..., cut[i]:cut[i + 1], :], b[..., :, cut[i]:], precision)
           for i in range(blocks)]
  block_rows = []
  for i in range(blocks):
    mirrored = [_swap(upper[j][..., :, cut[i] - cut[j]:cut[i + 1] - cut[j]])
                for j in range(i)]
    block_rows.append(jnp.concatenate(mirrored + [upper[i]], axis=-1))
  return jnp.concatenate(block_rows, axis=-2)


def ns_flops(m: int, n: int, ns_steps: int, form: str = "standard") -> int:
  """Flops of orthogonalising one ``m x n`` matrix (``m <= n`` after the
  transpose): ``4 m^2 n + 2 m^3`` per standard step; for the Gram form
  ``4 m^2 n`` at the ends plus ``2 m^3 (4 ns_steps - 3)``."""
  m, n = min(m, n), max(m, n)
  if form == "gram":
    return 4 * m * m * n + 2 * m**3 * (4 * ns_steps - 3)
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
    tuning: speed choices (:class:`Tuning`: the Gram form, symmetric block
      products); they change no result beyond rounding.

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

  def form_for(self, m: int, n: int) -> str:
    """``"standard"`` or ``"gram"`` for a wide ``m x n`` matrix."""
    form = self.tuning.form
    if form != "auto":
      return form
    # The Gram form squares the condition number of what it iterates on, so
    # it is used only where the arithmetic really is float32 (or wider).
    if (jnp.finfo(self.compute_dtype()).bits < 32
        or self.matmul_precision() != jax.lax.Precision.HIGHEST):
      return "standard"
    if self.steps > self.tuning.gram_max_steps:
      return "standard"
    gram = ns_flops(m, n, self.steps, "gram")
    return "gram" if gram < 0.9 * ns_flops(m, n, self.steps) else "standard"

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
    transpose = x.shape[-2] > x.shape[-1]
    if transpose:
      x = _swap(x)
    m, n = x.shape[-2:]
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.form_for(m, n) == "gram":
      x = self._gram_iteration(_scaled_by_max(x)[0])
    else:
      x = normalize_frobenius(x, self.eps, self.norm_scale)
      x = self._standard_iteration(x.astype(self.compute_dtype()))
    if transpose:
      x = _swap(x)
    return x.astype(out_dtype).reshape(shape)

  def _standard_iteration(self, x: jax.Array) -> jax.Array:
    """``A = X X^T; B = b A + c A A; X = a X + B X`` on wide ``x``."""
    cdtype, prec = x.dtype, self.matmul_precision()
    blocks = self.tuning.blocks_for(x.shape[-2])
    for a, b, c in self.rows:
      gram = _symmetric_matmul(x, _swap(x), blocks, prec).astype(cdtype)
      poly = (b * gram + c * _symmetric_matmul(gram, gram, blocks, prec)
              ).astype(cdtype)
      x = (a * x + _matmul(poly, x, prec)).astype(cdtype)
    return x

  def _gram_iteration(self, x: jax.Array) -> jax.Array:
    """The same polynomial, iterated on the small ``m x m`` Gram matrix.

    ``x`` is not yet normalised: ``X_0 = x / (norm_scale ||x||_F + eps)``.
    Every iterate is ``X_k = Q_k X_0`` with ``Q_k`` a polynomial in
    ``A_0 = X_0 X_0^T``, so all the ``m x m`` matrices commute and
    ``P_k = a I + b A_k + c A_k^2;  Q_{k+1} = P_k Q_k;
    A_{k+1} = P_k A_k P_k``. The ``m x n`` matrix is touched twice (``A_0``
    and ``Q X_0``), which makes a step cost ``8 m^3`` flops instead of
    ``4 m^2 n + 2 m^3``; the Frobenius norm comes from ``tr(A_0)``.

    Squaring ``X`` squares its condition number: in float32 the smallest
    singular directions (below about ``1e-3`` of the largest) come out with
    errors near ``3e-4`` of the result's norm where the standard form's are
    near ``1e-5``, so :meth:`form_for` picks this form only for float32
    arithmetic.

    References:
      "Gram Newton-Schulz: A Fast, Hardware-Aware Newton-Schulz Algorithm
      for Muon", Dao AI Lab blog, 2026.
      https://tridao.me/blog/2026/gram-newton-schulz/
    """
    cdtype, prec = self.compute_dtype(), self.matmul_precision()
    x = x.astype(cdtype)
    m = x.shape[-2]
    blocks = self.tuning.blocks_for(m)
    eye = jnp.eye(m, dtype=jnp.float32)
    gram = _matmul(x, _swap(x), prec)
    # X_0 = X / d with d = s ||X||_F + eps and ||X||_F^2 = tr(X X^T):
    # A_0 = X X^T / d^2, and 1 / d is folded into Q at the end.
    d = self.norm_scale * jnp.sqrt(jnp.trace(gram, axis1=-2, axis2=-1))[
        ..., None, None] + self.eps
    gram = gram / (d * d)
    q = None
    for k, (a, b, c) in enumerate(self.rows):
      g = gram.astype(cdtype)
      poly = a * eye + b * gram + c * _symmetric_matmul(g, g, blocks, prec)
      p = poly.astype(cdtype)
      q = poly if q is None else _symmetric_matmul(
          p, q.astype(cdtype), blocks, prec)
      if k + 1 < len(self.rows):
        gram = _symmetric_matmul(
            _symmetric_matmul(p, g, blocks, prec).astype(cdtype), p, blocks,
            prec)
    return _matmul((q / d).astype(cdtype), x, prec).astype(cdtype)


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
