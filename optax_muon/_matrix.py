"""The matrix view of a parameter leaf, and the shape scale.

A leaf in the Flax layout is seen as a stack of ``(fan_in, fan_out)``
matrices: a dense kernel as it is, an n-D kernel with every axis but the last
as fan-in (a conv kernel ``(H, W, C_in, C_out)`` as ``(H*W*C_in, C_out)``),
Flax attention's q/k/v kernels ``(in, heads, head_dim)`` as ``(in,
heads*head_dim)``, and user-declared batch axes (stacked or scanned layers)
as a batch of such matrices. Any other layout is stated per leaf with
:class:`MatrixAxes` (or ``optax.contrib.MuonDimensionNumbers``).
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


def stacked(*names: str, axis: int | Sequence[int] = 0) -> BatchAxesFn:
  """A ``batch_axes`` function for stacked (scanned) layers.

  Leaves whose key path contains one of ``names`` get ``axis`` as batch
  axes; all others none. This is the one-liner for a model whose blocks are
  built with ``nnx.vmap`` (applied with ``nnx.scan``) or ``linen.scan``
  under an attribute such as ``layers``: biases and norm scales of the stack
  still go to AdamW, and matrices outside it (a final projection) keep their
  full view.

  Example: ``om.muon(0.02, batch_axes=om.stacked("layers"))``.

  Args:
    names: path entries that mark the stacked sub-trees.
    axis: the stacking axis (or axes) of their leaves.
  """
  if not names or not all(isinstance(n, str) for n in names):
    raise ValueError(
        f"stacked needs the names of the stacked sub-trees as strings, got "
        f"{names!r}: e.g. om.stacked('layers').")
  names_set = frozenset(names)

  def batch_axes(path, leaf):
    del leaf
    return axis if names_set & {key_name(k) for k in path} else None
  return batch_axes


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
class MatrixAxes:
  """Which axes of a leaf are its matrix's fan-in and fan-out.

  A leaf ``x`` with ``MatrixAxes(fan_in=a, fan_out=b)`` is seen as a stack of
  ``(prod(shape[a]), prod(shape[b]))`` matrices; every axis in neither is a
  batch axis (an index over separate matrices). Axes may be negative, which
  makes one spec fit a leaf with or without leading stacked-layer axes.
  This is :class:`optax.contrib.MuonDimensionNumbers` under other names
  (``reduction_axis`` is ``fan_in``, ``output_axis`` is ``fan_out``); both
  are accepted wherever a ``matrix_axes`` spec is.

  Example: a Flax attention query kernel ``(in, heads, head_dim)`` as one
  ``(in, heads*head_dim)`` matrix is ``MatrixAxes(-3, (-2, -1))``, and as
  ``heads`` matrices ``(in, head_dim)`` is ``MatrixAxes(-3, -1)``.

  Attributes:
    fan_in: the input (reduction) axis or axes.
    fan_out: the output axis or axes.
  """

  fan_in: int | tuple[int, ...]
  fan_out: int | tuple[int, ...]


def is_axes_spec(x: Any) -> bool:
  """Whether ``x`` is a :class:`MatrixAxes` or an
  ``optax.contrib.MuonDimensionNumbers``."""
  return isinstance(x, MatrixAxes) or (
      isinstance(x, tuple) and hasattr(x, "reduction_axis")
      and hasattr(x, "output_axis"))


def _spec_axes(spec: Any) -> tuple[Any, Any]:
  if isinstance(spec, MatrixAxes):
    return spec.fan_in, spec.fan_out
  return spec.reduction_axis, spec.output_axis


#: ``matrix_axes(path, leaf) -> spec``: a leaf's fan-in/fan-out axes
#: (:class:`MatrixAxes` or ``optax.contrib.MuonDimensionNumbers``), or
#: ``None`` for the default view.
MatrixAxesFn = Callable[[KeyPath, Any], Any]
#: ``None`` (default views), one spec for every leaf, a tree like the params
#: with spec or ``None`` leaves, or a :data:`MatrixAxesFn`.
MatrixAxesArg = Any

#: Owner names of the input projections of Flax's attention
#: (``nnx.MultiHeadAttention``, ``linen.MultiHeadDotProductAttention``):
#: their kernels are ``(in, heads, head_dim)``.
ATTENTION_INPUT_NAMES: tuple[str, ...] = ("query", "key", "value")
#: Owner name of Flax attention's output projection, ``(heads, head_dim,
#: out)``.
ATTENTION_OUTPUT_NAMES: tuple[str, ...] = ("out",)


def owner_name(path: KeyPath) -> Any:
  """The name of the module that owns the leaf (the key before its own)."""
  names = [key_name(k) for k in path]
  if len(names) > 1 and names[-1] == "value":
    names = names[:-1]
  return names[-2] if len(names) > 1 else None


def per_head(path: KeyPath, leaf: Any) -> MatrixAxes | None:
  """A ``matrix_axes`` function that orthogonalises Flax attention per head.

  The q/k/v kernels ``(..., in, heads, head_dim)`` (owned by a module named
  ``query``, ``key`` or ``value``) become ``heads`` matrices ``(in,
  head_dim)`` and the output kernel ``(..., heads, head_dim, out)`` (owned by
  ``out``) ``heads`` matrices ``(head_dim, out)``, as Dion's ``num_heads``
  and modded-nanogpt's separate q, k, v projections do; every other leaf
  keeps its default view. Leading axes (stacked layers) are batch axes.

  Example: ``om.muon(0.02, matrix_axes=om.per_head)``.
  """
  if len(getattr(leaf, "shape", ())) < 3 or last_name(path) != "kernel":
    return None
  owner = owner_name(path)
  if owner in ATTENTION_INPUT_NAMES:
    return MatrixAxes(-3, -1)
  if owner in ATTENTION_OUTPUT_NAMES:
    return MatrixAxes(-2, -1)
  return None


def _single(axes: tuple[int, ...]) -> int | None:
  return axes[0] if len(axes) == 1 else None


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """How one leaf maps onto a stack of ``(fan_in, fan_out)`` matrices.

  The leaf is transposed to ``batch_axes + fan_in_axes + fan_out_axes`` and
  reshaped to ``(num_matrices, fan_in, fan_out)``.

  Attributes:
    shape: the leaf's shape.
    batch_axes: sorted, non-negative axes that index separate matrices.
    fan_in_axes: the axes flattened (in this order) into the fan-in.
    fan_out_axes: the axes flattened (in this order) into the fan-out.
  """

  shape: tuple[int, ...]
  batch_axes: tuple[int, ...]
  fan_in_axes: tuple[int, ...]
  fan_out_axes: tuple[int, ...]

  @property
  def fan_in(self) -> int:
    return math.prod(self.shape[a] for a in self.fan_in_axes)

  @property
  def fan_out(self) -> int:
    return math.prod(self.shape[a] for a in self.fan_out_axes)

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
    return self.fan_in_axes + self.fan_out_axes

  @property
  def fan_out_axis(self) -> int | None:
    """The leaf's axis of ``fan_out``; ``None`` if the fan-out is several
    axes flattened (the q/k/v kernels of attention)."""
    return _single(self.fan_out_axes)

  @property
  def small_side_axis(self) -> int | None:
    """The leaf's axis of the matrix's small side; ``None`` if that side is
    several axes flattened (the fan-in of a conv kernel)."""
    return _single(self.fan_out_axes if self.transposed else self.fan_in_axes)

  def _perm(self) -> tuple[int, ...]:
    return self.batch_axes + self.fan_in_axes + self.fan_out_axes

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


def resolve_matrix_axes(matrix_axes: MatrixAxesArg) -> MatrixAxesFn | None:
  """Turns a ``matrix_axes`` argument into a function ``(path, leaf) ->
  spec or None`` (``None`` for ``None``).

  A tree of specs is indexed once by its leaves' paths (as
  :func:`path_str` writes them, so an NNX ``State`` and its pure dict
  match); leaves it does not name keep their default view.
  """
  if matrix_axes is None or callable(matrix_axes) and not is_axes_spec(
      matrix_axes):
    return matrix_axes
  if isinstance(matrix_axes, jax.Array):
    raise ValueError(
        f"matrix_axes is the array {matrix_axes!r}: under "
        "optax.inject_hyperparams a function or tree passed as matrix_axes is "
        "taken for a hyperparameter; pass static_args=om.static_args(alias), "
        "which names 'matrix_axes'.")
  if is_axes_spec(matrix_axes):
    return lambda path, leaf: matrix_axes
  flat, _ = jax.tree_util.tree_flatten_with_path(
      matrix_axes, is_leaf=lambda x: x is None or is_axes_spec(x))
  table = {}
  for path, spec in flat:
    if spec is not None and not is_axes_spec(spec):
      raise ValueError(
          f"matrix_axes has {spec!r} at {path_str(path)!r}: its leaves must "
          "be om.MatrixAxes(fan_in, fan_out), "
          "optax.contrib.MuonDimensionNumbers or None.")
    table[path_str(path)] = spec
  return lambda path, leaf: table.get(path_str(path))


def _spec_for(matrix_axes, path, leaf):
  fn = resolve_matrix_axes(matrix_axes)
  if fn is None:
    return None
  spec = fn(path, leaf)
  if spec is not None and not is_axes_spec(spec):
    raise ValueError(
        f"matrix_axes gave {spec!r} for the leaf {path_str(path)!r}: return "
        "om.MatrixAxes(fan_in, fan_out), optax.contrib.MuonDimensionNumbers "
        "or None (default view).")
  return spec


def _spec_part(part, ndim: int, where: str, what: str) -> tuple[int, ...]:
  axes = (part,) if isinstance(part, (int, np.integer)) else tuple(part)
  if not axes or any(
      not isinstance(a, (int, np.integer)) or isinstance(a, bool)
      or not -ndim <= a < ndim for a in axes):
    raise ValueError(
        f"matrix_axes gives {what}={part!r} for the leaf at {where} ({ndim} "
        f"dims): give one or more axis indices in [-{ndim}, {ndim}).")
  return tuple(int(a) % ndim for a in axes)


def matrix_ndim(path: KeyPath, leaf: Any, batch_axes: BatchAxes,
                matrix_axes: MatrixAxesArg = None) -> int:
  """How many of a leaf's dimensions are matrix dimensions (0 for
  non-arrays): 2 for a leaf with a ``matrix_axes`` spec that fits it, else
  those that are not batch axes.

  Batch axes that do not fit the leaf count as none: the label rule asks
  only whether a leaf could be a matrix; :func:`matrix_view` reports the
  misfit when the leaf goes to Muon.
  """
  shape = tuple(getattr(leaf, "shape", ()))
  if not shape:
    return 0
  if _spec_for(matrix_axes, path, leaf) is not None:
    try:
      matrix_view(path, leaf, batch_axes, matrix_axes=matrix_axes)
      return 2
    except ValueError:
      return 0
  spec = batch_axes(path, leaf) if callable(batch_axes) else batch_axes
  try:
    axes = _normalize_axes(spec, len(shape), repr(path_str(path)), min_rest=0)
  except ValueError:
    axes = ()
  return len(shape) - len(axes)


def try_matrix_view(path: KeyPath, leaf: Any, batch_axes: BatchAxes = None,
                    matrix_axes: MatrixAxesArg = None) -> MatrixView | None:
  """:func:`matrix_view`, or ``None`` where it would raise."""
  try:
    return matrix_view(path, leaf, batch_axes, matrix_axes=matrix_axes)
  except (ValueError, TypeError, AttributeError):
    return None


def matrix_view(
    path: KeyPath, leaf: Any, batch_axes: BatchAxes = None,
    who: str = "scale_by_muon", matrix_axes: MatrixAxesArg = None,
) -> MatrixView:
  """Builds the matrix view of one leaf, checking it can go through Muon.

  The rules, in order:

  1. A ``matrix_axes`` spec for the leaf (:class:`MatrixAxes` or
     ``optax.contrib.MuonDimensionNumbers``) names its fan-in and fan-out
     axes; every other axis is a batch axis (``batch_axes`` may name some of
     them, never a fan-in or fan-out axis).
  2. Otherwise ``batch_axes`` index separate matrices, and of the other
     axes:

     - a Flax attention q/k/v kernel (leaf ``kernel`` of a module named
       ``query``, ``key`` or ``value``; :data:`ATTENTION_INPUT_NAMES`) is
       ``(in, heads, head_dim)`` -> ``(in, heads*head_dim)``: its last two
       axes are the fan-out, the one before the fan-in, and any before that
       (stacked layers) batch axes;
     - any other leaf has its last axis as fan-out and all others as fan-in:
       a dense kernel as it is, a conv kernel ``(H, W, C_in, C_out)`` as
       ``(H*W*C_in, C_out)``, the attention output kernel ``(heads,
       head_dim, out)`` as ``(heads*head_dim, out)``.

  Args:
    path: the leaf's key path (used in error messages, the name rule and by
      ``batch_axes`` / ``matrix_axes``).
    leaf: an array (or anything with ``shape`` and ``dtype``).
    batch_axes: ``None``, axes shared by every leaf, or a function
      ``(path, leaf) -> axes``.
    who: name of the transformation, for error messages.
    matrix_axes: ``None``, a spec for every leaf, a tree of specs (or
      ``None``) like the params, or a function ``(path, leaf) -> spec or
      None``.

  Raises:
    ValueError: naming the leaf's path, for a leaf with fewer than 2 matrix
      dimensions, a non-floating leaf, or batch or matrix axes that do not
      fit.
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
  ndim = len(shape)
  batch_spec = batch_axes(path, leaf) if callable(batch_axes) else batch_axes
  spec = _spec_for(matrix_axes, path, leaf)
  if spec is not None:
    fan_in, fan_out = _spec_axes(spec)
    fi = _spec_part(fan_in, ndim, where, "fan_in")
    fo = _spec_part(fan_out, ndim, where, "fan_out")
    if len(set(fi + fo)) != len(fi + fo):
      raise ValueError(
          f"matrix_axes {spec!r} names an axis twice for the leaf at {where} "
          f"with shape {shape}: fan-in and fan-out axes are distinct.")
    user_batch = _normalize_axes(batch_spec, ndim, where, min_rest=0)
    if set(user_batch) & set(fi + fo):
      raise ValueError(
          f"batch_axes {batch_spec!r} and matrix_axes {spec!r} share an axis "
          f"of the leaf at {where} with shape {shape}: a batch axis cannot be "
          "a fan-in or fan-out axis.")
    batch = tuple(a for a in range(ndim) if a not in fi + fo)
  else:
    batch = _normalize_axes(batch_spec, ndim, where)
    rest = [a for a in range(ndim) if a not in batch]
    if (len(rest) >= 3 and last_name(path) == "kernel"
        and owner_name(path) in ATTENTION_INPUT_NAMES):
      fi, fo = (rest[-3],), (rest[-2], rest[-1])
      batch = tuple(sorted(batch + tuple(rest[:-3])))
    else:
      fi, fo = tuple(rest[:-1]), (rest[-1],)
  view = MatrixView(shape, batch, fi, fo)
  if view.fan_in == 0 or view.fan_out == 0:
    raise ValueError(f"{who} got the empty leaf {where} with shape {shape}.")
  return view
