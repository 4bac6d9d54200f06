"""The matrix view of a parameter leaf, and the shape scale.

A leaf in the Flax layout is seen as a stack of ``(fan_in, fan_out)``
matrices: a dense kernel as it is, an n-D kernel with every axis but the last
as fan-in (a conv kernel ``(H, W, C_in, C_out)`` as ``(H*W*C_in, C_out)``),
and user-declared batch axes (stacked or scanned layers) as a batch of such
matrices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

KeyPath = tuple[Any, ...]
#: ``batch_axes(path, leaf) -> axes``: which axes of a leaf index separate
#: matrices (e.g. ``(0,)`` for the layer axis of ``nnx.scan``-ned layers).
BatchAxesFn = Callable[[KeyPath, Any], int | Sequence[int] | None]
BatchAxes = Union[None, int, Sequence[int], BatchAxesFn]

SHAPE_SCALES = ("spectral", "rms", "none")


def key_name(key: Any) -> Any:
  """The plain name or index inside one key-path entry."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def last_name(path: KeyPath) -> Any:
  """The leaf's own name: the last key of its path that names something
  (``nnx.Variable`` nodes add a trailing ``value`` entry)."""
  names = [key_name(k) for k in path]
  if len(names) > 1 and names[-1] == "value":
    names = names[:-1]
  return names[-1] if names else None


def path_str(path: KeyPath) -> str:
  """``('layers', 0, 'kernel')``-style key path as ``'layers/0/kernel'``."""
  parts = [str(key_name(k)) for k in path]
  # nnx.Variable nodes add a trailing '.value' entry that names nothing.
  if len(parts) > 1 and parts[-1] == "value":
    parts = parts[:-1]
  return "/".join(parts) if parts else "<root>"


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """How one leaf maps onto a stack of ``(fan_in, fan_out)`` matrices.

  Attributes:
    shape: the leaf's shape.
    batch_axes: sorted, non-negative axes that index separate matrices.
    fan_in: product of the non-batch axes but the last.
    fan_out: the last non-batch axis.
  """

  shape: tuple[int, ...]
  batch_axes: tuple[int, ...]
  fan_in: int
  fan_out: int

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in self.batch_axes)

  @property
  def num_matrices(self) -> int:
    return math.prod(self.batch_shape)

  @property
  def transposed(self) -> bool:
    """Whether the canonical (wide, ``m <= n``) matrix is ``G^T``."""
    return self.fan_in > self.fan_out

  @property
  def small_side(self) -> int:
    return min(self.fan_in, self.fan_out)

  @property
  def canonical_shape(self) -> tuple[int, int]:
    return (min(self.fan_in, self.fan_out), max(self.fan_in, self.fan_out))

  @property
  def matrix_axes(self) -> tuple[int, ...]:
    """The leaf's axes that are not batch axes: fan-in axes, then fan-out."""
    return tuple(a for a in range(len(self.shape)) if a not in self.batch_axes)

  @property
  def fan_out_axis(self) -> int:
    """The leaf's axis of ``fan_out`` (its last non-batch axis)."""
    return self.matrix_axes[-1]

  @property
  def small_side_axis(self) -> int | None:
    """The leaf's axis of the matrix's small side; ``None`` if that side is
    several axes flattened (the fan-in of a conv kernel)."""
    axes = self.matrix_axes
    if self.transposed:
      return axes[-1]
    return axes[0] if len(axes) == 2 else None

  def _perm(self) -> tuple[int, ...]:
    return self.batch_axes + self.matrix_axes

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """Leaf -> ``(num_matrices, m, n)`` canonical (wide) matrices."""
    x = jnp.transpose(x, self._perm()).reshape(
        self.num_matrices, self.fan_in, self.fan_out)
    return jnp.swapaxes(x, -1, -2) if self.transposed else x

  def from_matrices(self, x: jax.Array) -> jax.Array:
    """Inverse of :meth:`to_matrices`."""
    if self.transposed:
      x = jnp.swapaxes(x, -1, -2)
    perm = self._perm()
    x = x.reshape(tuple(self.shape[a] for a in perm))
    return jnp.transpose(x, tuple(perm.index(a) for a in range(len(perm))))

  def shape_scale(self, kind: str) -> float:
    """``"spectral"``: ``sqrt(max(1, fan_out / fan_in))``; ``"rms"``:
    ``0.2 * sqrt(max(fan_in, fan_out))``; ``"none"``: 1."""
    if kind == "spectral":
      return math.sqrt(max(1.0, self.fan_out / self.fan_in))
    if kind == "rms":
      return 0.2 * math.sqrt(max(self.fan_in, self.fan_out))
    if kind == "none":
      return 1.0
    raise ValueError(
        f"Unknown shape_scale {kind!r}: use one of {SHAPE_SCALES}.")


def _normalize_axes(spec, ndim: int, where: str,
                    min_rest: int = 2) -> tuple[int, ...]:
  if spec is None:
    return ()
  if isinstance(spec, jax.Array):
    raise ValueError(
        f"batch_axes is the array {spec!r}: under optax.inject_hyperparams a "
        "function passed as batch_axes is taken for a schedule; pass "
        "static_args=om.static_args(alias), which names 'batch_axes'.")
  per_leaf = (" Axes shared by every leaf must fit them all; otherwise pass "
              "batch_axes=lambda path, leaf: axes, returning None for leaves "
              "that are single matrices. (Under optax.inject_hyperparams a "
              "batch_axes function must be named in static_args: "
              "om.static_args(alias).)")
  try:
    axes = (spec,) if isinstance(spec, int) else tuple(spec)
  except TypeError:
    axes = (spec,)
  out = []
  for a in axes:
    if (not isinstance(a, (int, np.integer)) or isinstance(a, bool)
        or not -ndim <= a < ndim):
      raise ValueError(
          f"batch_axes {spec!r} does not fit the leaf at {where} "
          f"({ndim} dims): give axis indices in [-{ndim}, {ndim})."
          + per_leaf)
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(
        f"batch_axes {spec!r} repeats an axis for the leaf at {where}: name "
        "each batch axis once.")
  if ndim - len(out) < min_rest:
    raise ValueError(
        f"batch_axes {spec!r} leaves fewer than 2 matrix axes of the leaf at "
        f"{where} with {ndim} dims: a Muon leaf needs (fan_in, fan_out) axes "
        "besides its batch axes." + per_leaf)
  return tuple(sorted(out))


def matrix_ndim(path: KeyPath, leaf: Any, batch_axes: BatchAxes) -> int:
  """How many of a leaf's dimensions are not batch axes (0 for non-arrays).

  Batch axes that do not fit the leaf count as none: the label rule asks
  only whether a leaf could be a matrix; :func:`matrix_view` reports the
  misfit when the leaf goes to Muon.
  """
  shape = tuple(getattr(leaf, "shape", ()))
  if not shape:
    return 0
  spec = batch_axes(path, leaf) if callable(batch_axes) else batch_axes
  try:
    axes = _normalize_axes(spec, len(shape), repr(path_str(path)), min_rest=0)
  except ValueError:
    axes = ()
  return len(shape) - len(axes)


def matrix_view(
    path: KeyPath, leaf: Any, batch_axes: BatchAxes = None,
    who: str = "scale_by_muon",
) -> MatrixView:
  """Builds the matrix view of one leaf, checking it can go through Muon.

  Args:
    path: the leaf's key path (used in error messages and by ``batch_axes``).
    leaf: an array (or anything with ``shape`` and ``dtype``).
    batch_axes: ``None``, axes shared by every leaf, or a function
      ``(path, leaf) -> axes``.
    who: name of the transformation, for error messages.

  Raises:
    ValueError: naming the leaf's path, for a leaf with fewer than 2 matrix
      dimensions, a non-floating leaf, or batch axes that do not fit.
  """
  where = repr(path_str(path))
  shape = tuple(leaf.shape)
  if len(shape) < 2:
    raise ValueError(
        f"{who} got the leaf {where} with shape {shape}: Muon works on "
        "matrices (2 or more dims). Route vectors, scalars, biases and norms "
        "to AdamW (om.muon_labels does this) or fix param_labels.")
  if not jnp.issubdtype(leaf.dtype, jnp.floating):
    raise ValueError(
        f"{who} got the leaf {where} of dtype {leaf.dtype}: Muon needs "
        "floating-point parameters. Label it 'adamw' or exclude it from the "
        "optimizer (e.g. nnx.Optimizer(..., wrt=nnx.Param)).")
  spec = batch_axes(path, leaf) if callable(batch_axes) else batch_axes
  axes = _normalize_axes(spec, len(shape), where)
  rest = [shape[a] for a in range(len(shape)) if a not in axes]
  fan_in, fan_out = math.prod(rest[:-1]), rest[-1]
  if fan_in == 0 or fan_out == 0:
    raise ValueError(f"{who} got the empty leaf {where} with shape {shape}.")
  return MatrixView(shape, axes, fan_in, fan_out)
