"""The one gradient transformation every Muon-family optimizer shares.

Per matrix leaf it does, in order:

  gradient -> momentum (EMA, Nesterov) -> matrix view -> DIRECTION
           -> shape scale -> update

Only the direction differs between variants. Same-shape matrices from
different leaves (after putting every matrix in its wide orientation) are
stacked and handed to the direction function in one batched call; with
``ns_mesh_axis`` the stack is split across that mesh axis so that each device
orthogonalises only its share.

On a device mesh (the last section of this module) everything runs on JAX's
SPMD partitioner: sharding constraints move the stacks between the params'
layouts and the split, ``init`` places the state like its param, and under
Explicit mesh axes the matrix work runs with the axes made Auto and hands
back every update and state leaf with the sharding it came in with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import shard_alike
from jax.typing import DTypeLike

from optax_muon import _matrix

MeshAxis = Union[None, str, Sequence[str]]


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
    direction: ``(m, states, count, transposed) -> (d, new_states)``: ``m``
      is a ``(k, rows, cols)`` stack of canonical (``rows <= cols``)
      momentum matrices in float32, ``states`` a tuple of the variant's state
      stacks (leading axis ``k``), ``count`` the 1-based step and
      ``transposed`` whether the stack holds ``G^T`` of the ``(fan_in,
      fan_out)`` matrices.
    orientation_matters: whether :attr:`direction` depends on ``transposed``;
      if so, wide and tall leaves are never stacked together.
    state_axes: ``view -> tuple``, one entry per extra state field: for each
      axis of that field's leaf, the axis of the param whose sharding it
      shares on a device mesh (``None``: not sharded). Used to place the
      state like its param (see :func:`_state_sharding`).
  """

  name: str
  state_cls: type
  direction: Callable[..., tuple[jax.Array, tuple[jax.Array, ...]]]
  init_leaf: Callable[[_matrix.MatrixView, Any], tuple[jax.Array, ...]] = (
      lambda view, dtype: ())
  orientation_matters: bool = False
  state_axes: Callable[[_matrix.MatrixView], tuple[tuple[int | None, ...], ...]] = (
      lambda view: ())


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


def _ema_step(buf: jax.Array, g: jax.Array, beta) -> jax.Array:
  """``beta * buf + (1 - beta) * g`` in the wider of the two dtypes, stored
  in the buffer's: a float32 momentum of bfloat16 or float16 gradients does
  not round ``(1 - beta) g`` to the gradient's precision (nor underflow it,
  for float16 gradients below about 1e-3)."""
  acc = jnp.promote_types(buf.dtype, g.dtype)
  return (beta * buf.astype(acc) + (1 - beta) * g.astype(acc)).astype(
      buf.dtype)


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

  The buffer is kept in ``mu_dtype`` (default: the leaf's dtype promoted to
  at least float32) and the EMA is computed in the wider of that and the
  gradient's dtype; the update is cast to the gradient's dtype. Every
  direction is invariant to the scale of ``M``: the update is the same for
  gradients ``g`` and ``c g`` (``c`` from 1e-30 to 1e30 in float32), zero for
  zero gradients, and finite for finite gradients. A non-finite gradient
  entry makes its leaf's update NaN and stays in the buffer (use
  ``optax.apply_if_finite``); other leaves are not affected.
  """
  if shape_scale not in _matrix.SHAPE_SCALES:
    raise ValueError(
        f"Unknown shape_scale {shape_scale!r}: use one of "
        f"{_matrix.SHAPE_SCALES}.")
  if not isinstance(nesterov, bool):
    raise ValueError(f"nesterov must be a bool, got {nesterov!r}.")
  if mesh is not None:
    _check_mesh(mesh, _mesh_axes(ns_mesh_axis), "mesh=")
  who = f"scale_by_{variant.name}"

  def views_of(tree):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: _matrix.matrix_view(p, x, batch_axes, who), tree)

  def init_fn(params):
    views = views_of(params)
    # zeros_like keeps the param's sharding (eagerly, and inside jit under
    # Explicit axes); the extra state is placed by the variant's state_axes.
    mu = jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=momentum_dtype(p.dtype, mu_dtype)),
        params)
    extra_leaves = jax.tree.map(
        lambda v, p: _init_extras(variant, v, p, mu_dtype), views, params,
        is_leaf=lambda x: isinstance(x, _matrix.MatrixView))
    extras = _unzip_fields(extra_leaves, views, variant)
    return variant.state_cls(jnp.zeros([], jnp.int32), mu, *extras)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    beta = jnp.asarray(momentum)
    mu = jax.tree.map(
        lambda g, m: _ema_step(m, g, beta), updates, state.mu)
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
    ms = [m for _, m in paths_and_m]

    def directions(ms, extras, count):
      split = _resolve_split(ns_mesh_axis, mesh)
      dirs, new_extras = _directions_by_group(
          variant, ms, extras, views, count, split)
      return _shard_like(dirs, ms), _shard_like(new_extras, extras)

    dirs, new_extras = _auto_axes_region(
        directions, (ms, extras, count), (grads, extras))
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
      m_stack = _split_stack(m_stack, split)
      state_stacks = tuple(_split_stack(s, split) for s in state_stacks)
    d_stack, new_states = variant.direction(
        m_stack, state_stacks, count, transposed)
    if split is not None:
      d_stack = _unsplit_stack(d_stack, split, total)
      new_states = tuple(_unsplit_stack(s, split, total) for s in new_states)
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


# ------------------------------------------------------------ device mesh ----
#
# Everything below is about running the skeleton on a device mesh with JAX's
# own SPMD partitioner: sharding constraints on the stacked matrices, and
# placing the optimizer state like its param. No collective is written by
# hand; XLA inserts them from the shardings.


class _Split(NamedTuple):
  """Split the stacks' leading axis over mesh ``axes`` (``size`` devices)."""
  mesh: Any  # a jax.sharding.Mesh or AbstractMesh whose split axes are Auto
  axes: tuple[str, ...]
  size: int


def _mesh_axes(ns_mesh_axis: MeshAxis) -> tuple[str, ...] | None:
  """``ns_mesh_axis`` as a tuple of axis names (``None`` stays ``None``)."""
  if ns_mesh_axis is None:
    return None
  axes = ((ns_mesh_axis,) if isinstance(ns_mesh_axis, str)
          else tuple(ns_mesh_axis))
  if not axes or not all(isinstance(a, str) for a in axes) or len(
      set(axes)) != len(axes):
    raise ValueError(
        f"ns_mesh_axis must be a mesh axis name or a tuple of distinct names, "
        f"got {ns_mesh_axis!r}.")
  return axes


def _check_mesh(mesh, axes: tuple[str, ...] | None, where: str) -> None:
  """Raises ``ValueError`` unless ``mesh`` names every axis in ``axes``."""
  missing = [a for a in axes or () if a not in mesh.axis_names]
  if missing:
    raise ValueError(
        f"ns_mesh_axis names {missing}, which {where} does not have (its axes "
        f"are {tuple(mesh.axis_names)}): pass axis names of the mesh.")


def _resolve_split(ns_mesh_axis: MeshAxis, mesh) -> _Split | None:
  """The mesh and axes to split stacks over; called while tracing.

  Inside a mesh context (``jax.set_mesh``) shardings are built on the
  context's mesh, whose axis types are the ones in force (Auto inside
  :func:`_auto_axes_region`); ``mesh=`` must then be that mesh. Without a
  context, ``mesh=`` is used with its split axes made Auto.
  """
  axes = _mesh_axes(ns_mesh_axis)
  if axes is None:
    return None
  context = jax.sharding.get_abstract_mesh()
  if mesh is None:
    if context.empty:
      raise ValueError(
          f"ns_mesh_axis={ns_mesh_axis!r} needs a device mesh, and there is "
          "none: pass mesh=... to the optimizer, or call it under "
          "jax.set_mesh(mesh).")
    target = context
  elif not context.empty:
    if (tuple(context.axis_names) != tuple(mesh.axis_names)
        or tuple(context.axis_sizes) != tuple(mesh.axis_sizes)):
      raise ValueError(
          f"The optimizer's mesh= ({dict(mesh.shape)}) is not the ambient "
          f"mesh ({dict(context.shape)}) it runs under: pass the same mesh "
          "to both, or leave mesh=None to use the ambient one.")
    target = context
  else:
    target = _auto_typed(mesh, axes)
  _check_mesh(target, axes, "the mesh")
  size = math.prod(target.shape[a] for a in axes)
  return _Split(target, axes, size)


def _auto_typed(mesh, axes):
  """``mesh`` with ``axes`` of type Auto (sharding constraints need that)."""
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  if all(types[a] == jax.sharding.AxisType.Auto for a in axes
         if a in types):
    return mesh
  new_types = tuple(
      jax.sharding.AxisType.Auto if n in axes else t
      for n, t in zip(mesh.axis_names, mesh.axis_types))
  if isinstance(mesh, jax.sharding.Mesh):
    return jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                             axis_types=new_types)
  return mesh.update(axis_types=new_types)


def _constrain(x: jax.Array, mesh, spec) -> jax.Array:
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return jax.lax.with_sharding_constraint(x, sharding)


def _split_stack(x: jax.Array, split: _Split) -> jax.Array:
  """Pads the stack to a multiple of the split size and shards its leading
  axis over the split axes: each device holds ``k / size`` whole matrices.

  The stack is first pinned with its leading axis unsplit (each matrix laid
  out like its param), then the split axes move onto the leading axis one
  at a time: a replicated param costs a local slice, a sharded one an
  all-to-all per mesh axis it is sharded over. (Asking the partitioner for
  the whole move at once makes it replicate the stack first.)

  Padding matrices are zeros; every direction maps them to finite values
  (Newton–Schulz divides by ``||X|| + eps``), and :func:`_unsplit_stack`
  drops them.
  """
  x = _constrain(x, split.mesh, _stack_spec((), x.ndim))
  x = _pad(x, (-x.shape[0]) % split.size)
  for i in range(1, len(split.axes)):
    x = _constrain(x, split.mesh, _stack_spec(split.axes[:i], x.ndim))
  return _constrain(x, split.mesh, jax.sharding.PartitionSpec(split.axes))


def _unsplit_stack(x: jax.Array, split: _Split, total: int) -> jax.Array:
  """Undoes :func:`_split_stack`: the split axes leave the leading axis one
  at a time, last first, and the padding is dropped.

  The matrix axes are left to the partitioner, which takes them from where
  the results go (the update added to the param, the state tied to the
  state that came in): a sharded param gets only its own shard of each
  matrix (an all-to-all), a replicated one the whole matrix (an all-gather,
  like the reference PyTorch Muon's ``all_gather``).
  """
  for i in reversed(range(len(split.axes))):
    x = _constrain(x, split.mesh, _stack_spec(split.axes[:i], x.ndim))
  return x[:total]


def _stack_spec(axes: tuple[str, ...], ndim: int):
  """Leading axis split over ``axes`` (unsplit if empty), the matrix axes
  left to the partitioner."""
  P = jax.sharding.PartitionSpec
  return P(axes or None, *([P.UNCONSTRAINED] * (ndim - 1)))


def _typed_sharding(x):
  """``x``'s ``NamedSharding`` where it is known while tracing, else None.

  Known for concrete arrays (eager ``init``) and, inside ``jit``, for arrays
  whose mesh has Explicit axes; under Auto axes the partitioner decides it
  later, and ``None`` is returned.
  """
  if isinstance(x, jax.core.Tracer):
    sharding = jax.typeof(x).sharding
    if (isinstance(sharding, jax.sharding.NamedSharding)
        and sharding.mesh.explicit_axes):
      return sharding
    return None
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return sharding
  return None


def _state_sharding(param_sharding, axes: Sequence[int | None]):
  """The sharding of a state leaf built from its param's sharding.

  Args:
    param_sharding: the param's ``NamedSharding``.
    axes: for each axis of the state leaf, the param axis whose mesh axes it
      takes (``None``: not sharded along that axis).
  """
  spec = tuple(param_sharding.spec)
  new = [None if a is None or a >= len(spec) else spec[a] for a in axes]
  return jax.sharding.NamedSharding(
      param_sharding.mesh, jax.sharding.PartitionSpec(*new))


def _place_like(x: jax.Array, param, axes: Sequence[int | None]) -> jax.Array:
  """Puts a fresh state leaf on the devices the way ``param`` is placed."""
  sharding = _typed_sharding(param)
  if sharding is None:
    return x
  target = _state_sharding(sharding, axes)
  if isinstance(param, jax.core.Tracer):
    return jax.sharding.reshard(x, target)
  # Built shard by shard from the host value, which is the same on every
  # process: safe on a mesh that spans several hosts.
  value = np.asarray(x)
  return jax.make_array_from_callback(
      value.shape, target, lambda index: value[index])


def _shard_like(new, old):
  """Asks the partitioner to give each leaf of ``new`` the sharding it
  gives the matching leaf of ``old`` (``jax.experimental.shard_alike``).

  Under Auto axes the jit's output layouts are the partitioner's choice;
  this ties the updates to the gradients and the new state to the state
  that came in, rather than to the layout the (split) stacks left them in.
  """
  if not jax.tree.leaves(new):
    return new
  return shard_alike.shard_alike(new, old)[0]


def _auto_axes_region(fn, args, out_leaves):
  """Runs ``fn(*args)`` with the Explicit mesh axes made Auto.

  Under Explicit axes (``jax.make_mesh``'s default) every op must have an
  unambiguous output sharding, which matrix reshapes, stacking and
  Newton–Schulz's contractions over a sharded axis do not have; inside, the
  partitioner is free to choose, and on the way out each output is
  resharded to the sharding of the matching leaf of ``out_leaves`` (the
  gradient for an update, the incoming state for a state). The mesh is the
  context's (``jax.set_mesh``) or, without one, the one the arrays carry.
  Without Explicit axes it just calls ``fn``.
  """
  out_sharding = jax.tree.map(lambda x: jax.typeof(x).sharding, out_leaves)
  context = jax.sharding.get_abstract_mesh()
  if not context.empty:
    # Specs on the context mesh: arrays not yet placed on it (e.g. plain
    # host arrays) carry an empty mesh and come out replicated.
    out_sharding = jax.tree.map(lambda s: s.spec, out_sharding)
  if context.empty:
    meshes = {s.mesh for s in jax.tree.leaves(out_sharding)
              if isinstance(s, jax.sharding.NamedSharding)
              and not s.mesh.empty}
    explicit = tuple(a for m in meshes for a in m.explicit_axes)
  else:
    explicit = context.explicit_axes
  if not explicit:
    return fn(*args)
  return jax.sharding.auto_axes(
      fn, axes=tuple(dict.fromkeys(explicit)), out_sharding=out_sharding)(
          *args)


def _init_extras(variant, view, param, mu_dtype):
  """The variant's extra state for one leaf, placed like the param."""
  leaves = variant.init_leaf(view, momentum_dtype(param.dtype, mu_dtype))
  axes = variant.state_axes(view)
  if not axes:
    return leaves
  if len(axes) != len(leaves):
    raise ValueError(
        f"Variant {variant.name!r}: state_axes gives {len(axes)} entries for "
        f"{len(leaves)} state leaves.")
  return tuple(_place_like(x, param, a) for x, a in zip(leaves, axes))


def fan_out_axis(view: _matrix.MatrixView) -> int:
  """The param axis of a view's ``fan_out`` (its last non-batch axis)."""
  return _matrix_axes(view)[-1]


def small_side_axis(view: _matrix.MatrixView) -> int | None:
  """The param axis of the view's small side, ``None`` if that side is
  several axes flattened (the fan-in of a conv kernel)."""
  axes = _matrix_axes(view)
  if view.transposed:
    return axes[-1]
  return axes[0] if len(axes) == 2 else None


def _matrix_axes(view: _matrix.MatrixView) -> tuple[int, ...]:
  return tuple(a for a in range(len(view.shape)) if a not in view.batch_axes)
