"""The one gradient transformation every Muon-family optimizer shares.

Per matrix leaf it does, in order:

  gradient -> momentum (EMA, Nesterov) -> matrix view -> DIRECTION
           -> shape scale -> update

Only the direction differs between variants. Same-shape matrices from
different leaves (after putting every matrix in its wide orientation) are
stacked and handed to the direction function in one batched call; with
``ns_mesh_axis`` the stack is split across that mesh axis so that each device
orthogonalises only its share.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from optax_muon import _matrix

MeshAxis = Union[None, str, Sequence[str]]


class DirectionFn:
  """Protocol of a variant's direction (documentation only).

  ``direction(m, states, count, transposed) -> (d, new_states)`` where ``m``
  is a ``(k, rows, cols)`` stack of canonical (``rows <= cols``) momentum
  matrices in float32, ``states`` a tuple of the variant's state stacks
  (leading axis ``k``), ``count`` the 1-based step and ``transposed`` whether
  the stack holds ``G^T`` of ``(fan_in, fan_out)`` matrices.
  """


@dataclasses.dataclass(frozen=True)
class Variant:
  """What a Muon-family optimizer adds to the shared skeleton.

  Attributes:
    name: used in error messages.
    state_cls: the ``NamedTuple`` state; its first two fields are ``count``
      and ``mu``, the rest are trees shaped like the params whose leaves
      :attr:`init_leaf` builds.
    init_leaf: ``(view, dtype) -> tuple`` of arrays, one per extra state
      field, each with leading axes ``view.batch_shape``.
    direction: see :class:`DirectionFn`.
    orientation_matters: whether :attr:`direction` depends on ``transposed``;
      if so, wide and tall leaves are never stacked together.
  """

  name: str
  state_cls: type
  direction: Callable[..., tuple[jax.Array, tuple[jax.Array, ...]]]
  init_leaf: Callable[[_matrix.MatrixView, Any], tuple[jax.Array, ...]] = (
      lambda view, dtype: ())
  orientation_matters: bool = False


class ScaleByMuonState(NamedTuple):
  """State of :func:`scale_by_muon` and :func:`scale_by_ogsignmuon`."""
  count: jax.Array  # int32 step count, starts at 0
  mu: optax.Updates  # momentum buffers, like the params, in mu_dtype


def momentum_dtype(leaf_dtype, mu_dtype: DTypeLike | None) -> jnp.dtype:
  """``mu_dtype`` if given, else the leaf's dtype promoted to at least
  float32 (bfloat16 and float16 params keep a float32 momentum)."""
  if mu_dtype is not None:
    return jnp.dtype(mu_dtype)
  return jnp.promote_types(leaf_dtype, jnp.float32)


def _resolve_mesh_axis(ns_mesh_axis: MeshAxis, mesh):
  """Returns ``(mesh, axes, size)`` for splitting stacks, or ``None``."""
  if ns_mesh_axis is None:
    return None
  axes = (ns_mesh_axis,) if isinstance(ns_mesh_axis, str) else tuple(
      ns_mesh_axis)
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
      raise ValueError(
          f"ns_mesh_axis={ns_mesh_axis!r} needs a mesh: pass mesh=... or "
          "run under jax.set_mesh(mesh) / jax.sharding.use_mesh(mesh).")
  missing = [a for a in axes if a not in mesh.axis_names]
  if missing:
    raise ValueError(
        f"ns_mesh_axis {missing} not in the mesh's axes {mesh.axis_names}.")
  size = math.prod(mesh.shape[a] for a in axes)
  return mesh, axes, size


def _constrain(x: jax.Array, mesh, spec) -> jax.Array:
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return jax.lax.with_sharding_constraint(x, sharding)


def scale_by_muon_family(
    variant: Variant,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    shape_scale: str = "spectral",
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    ns_mesh_axis: MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
) -> optax.GradientTransformation:
  """The shared skeleton; see the module docstring and ALGORITHMS.md.

  Momentum (EMA form of the reference PyTorch Muon, no bias correction)::

    buf = momentum * buf + (1 - momentum) * g
    M = (1 - momentum) * g + momentum * buf   if nesterov   else   buf

  then ``u = direction(M) * shape_scale`` per matrix.
  """
  if shape_scale not in _matrix.SHAPE_SCALES:
    raise ValueError(
        f"Unknown shape_scale {shape_scale!r}: use one of "
        f"{_matrix.SHAPE_SCALES}.")
  if not isinstance(nesterov, bool):
    raise ValueError(f"nesterov must be a bool, got {nesterov!r}.")
  who = f"scale_by_{variant.name}"

  def views_of(tree):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: _matrix.matrix_view(p, x, batch_axes, who), tree)

  def init_fn(params):
    views = views_of(params)
    mu = jax.tree.map(
        lambda p: jnp.zeros(p.shape, momentum_dtype(p.dtype, mu_dtype)),
        params)
    extra_leaves = jax.tree.map(
        lambda v, p: variant.init_leaf(v, momentum_dtype(p.dtype, mu_dtype)),
        views, params, is_leaf=lambda x: isinstance(x, _matrix.MatrixView))
    extras = _unzip_fields(extra_leaves, views, variant)
    return variant.state_cls(jnp.zeros([], jnp.int32), mu, *extras)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    beta = jnp.asarray(momentum)
    mu = jax.tree.map(
        lambda g, m: (beta * m + (1 - beta) * g).astype(m.dtype),
        updates, state.mu)
    if nesterov:
      m_tree = jax.tree.map(
          lambda g, m: (1 - beta) * g.astype(jnp.float32) + beta * m,
          updates, mu)
    else:
      m_tree = mu
    paths_and_m, treedef = jax.tree_util.tree_flatten_with_path(m_tree)
    grads = treedef.flatten_up_to(updates)
    extras = [treedef.flatten_up_to(t) for t in state[2:]]
    views = [_matrix.matrix_view(p, g, batch_axes, who)
             for (p, _), g in zip(paths_and_m, grads)]
    dirs, new_extras = _directions_by_group(
        variant, [m for _, m in paths_and_m], extras, views, count,
        _resolve_mesh_axis(ns_mesh_axis, mesh))
    out = [
        (d * v.shape_scale(shape_scale)).astype(g.dtype)
        for d, v, g in zip(dirs, views, grads)
    ]
    new_state = variant.state_cls(
        count, mu, *[treedef.unflatten(e) for e in new_extras])
    return treedef.unflatten(out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def _unzip_fields(extra_leaves, views, variant):
  """Tree of per-leaf tuples -> tuple of per-field trees."""
  num = len(variant.state_cls._fields) - 2
  treedef = jax.tree.structure(
      views, is_leaf=lambda x: isinstance(x, _matrix.MatrixView))
  leaves = treedef.flatten_up_to(extra_leaves)
  return tuple(
      treedef.unflatten([leaf[i] for leaf in leaves]) for i in range(num))


def _directions_by_group(variant, ms, extras, views, count, split):
  """Stacks same-shape matrices, runs the direction, splits them back."""
  if split is None and _loop_over_stacks():
    variant = dataclasses.replace(
        variant, direction=_one_matrix_at_a_time(variant.direction))
  groups: dict[Any, list[int]] = {}
  for i, v in enumerate(views):
    key = v.canonical_shape
    if variant.orientation_matters:
      key = key + (v.transposed,)
    groups.setdefault(key, []).append(i)

  dirs: list[Any] = [None] * len(views)
  new_extras = [[None] * len(views) for _ in extras]
  for idxs in groups.values():
    transposed = views[idxs[0]].transposed
    stacks = [views[i].to_matrices(ms[i].astype(jnp.float32)) for i in idxs]
    sizes = [s.shape[0] for s in stacks]
    m_stack = _concat(stacks)
    state_stacks = tuple(
        _concat([e[i].reshape((views[i].num_matrices,) + e[i].shape[
            len(views[i].batch_axes):]) for i in idxs]) for e in extras)
    total = m_stack.shape[0]
    if split is not None:
      mesh, axes, size = split
      pad = (-total) % size
      spec = jax.sharding.PartitionSpec(axes)
      m_stack = _constrain(_pad(m_stack, pad), mesh, spec)
      state_stacks = tuple(_constrain(_pad(s, pad), mesh, spec)
                           for s in state_stacks)
    d_stack, new_states = variant.direction(
        m_stack, state_stacks, count, transposed)
    if split is not None:
      # Gather the results back: every device gets the whole stack, and XLA
      # re-shards it to each parameter's own layout downstream.
      replicated = jax.sharding.PartitionSpec()
      d_stack = _constrain(d_stack, mesh, replicated)[:total]
      new_states = tuple(_constrain(s, mesh, replicated)[:total]
                         for s in new_states)
    offsets = _offsets(sizes)
    for j, i in enumerate(idxs):
      lo, hi = offsets[j], offsets[j + 1]
      dirs[i] = views[i].from_matrices(d_stack[lo:hi])
      for f, s in enumerate(new_states):
        new_extras[f][i] = s[lo:hi].reshape(extras[f][i].shape).astype(
            extras[f][i].dtype)
  return dirs, new_extras


def _concat(xs):
  return xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=0)


def _pad(x, pad):
  if pad == 0:
    return x
  return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _offsets(sizes):
  out = [0]
  for s in sizes:
    out.append(out[-1] + s)
  return out


#: Below this many entries per matrix a stack is always processed in one
#: batched call: small matrices fit in cache either way, and a loop's
#: per-iteration overhead would dominate.
_LOOP_MIN_ENTRIES = 128 * 128
#: ``None``: loop over stacks on CPU only; ``True`` / ``False`` force it (for
#: the benchmarks, which compare both).
_LOOP_STACKS: bool | None = None


def _loop_over_stacks() -> bool:
  """Whether stacks are run one matrix at a time (see
  :func:`_one_matrix_at_a_time`): on CPU, unless forced by ``_LOOP_STACKS``."""
  if _LOOP_STACKS is not None:
    return _LOOP_STACKS
  return jax.default_backend() == "cpu"


def _one_matrix_at_a_time(direction):
  """Wraps a direction so that a stack runs as a loop over its matrices.

  A direction is independent per matrix, so this changes no result. On CPU
  it is faster than one batched call (measured in benchmarks/README.md):
  the batched call runs each Newton–Schulz matmul over the whole stack before
  the next, streaming every intermediate through memory, while a loop keeps
  one matrix's intermediates in cache. Accelerators want the batch, so this
  is only used on CPU.
  """
  def looped(m, states, count, transposed):
    k, rows, cols = m.shape
    if k == 1 or rows * cols < _LOOP_MIN_ENTRIES:
      return direction(m, states, count, transposed)

    def one(args):
      m_i, states_i = args
      d, new = direction(m_i[None], tuple(s[None] for s in states_i), count,
                         transposed)
      return d[0], tuple(s[0] for s in new)

    return jax.lax.map(one, (m, tuple(states)))

  return looped
