"""The one gradient transformation every Muon-family optimizer shares.

Per matrix leaf it does, in order::

  gradient -> momentum (EMA, Nesterov) -> matrix view -> group -> DIRECTION
           -> shape scale -> update

Only the direction differs between variants (a :class:`Direction`).
Same-shape matrices from different leaves (after putting every matrix in its
wide orientation) are stacked and handed to the direction in one call. Where
that matrix work runs on a device mesh is :class:`~optax_muon._mesh.MeshPlan`'s
concern (module ``_mesh``).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from optax_muon import _checks, _layout, _matrix, _mesh, _tuning

#: ``(k, rows, cols)`` stack of canonical (``rows <= cols``) matrices.
Stack = jax.Array


class ScaleByMuonState(NamedTuple):
  """State of :func:`scale_by_muon` and :func:`scale_by_ogsignmuon`."""
  count: jax.Array  # int32 step count, starts at 0
  mu: optax.Updates  # momentum buffers, like the params, in mu_dtype


class Direction:
  """What a Muon-family optimizer adds to the shared skeleton.

  Subclass it (the variants are small frozen dataclasses) and give:

  Attributes:
    name: used in error messages (``scale_by_<name>``).
    state_cls: the ``NamedTuple`` state; its first two fields are ``count``
      and ``mu``, the rest are trees shaped like the params whose leaves
      :meth:`init` builds.
    orientation_matters: whether the direction depends on ``transposed``;
      if so, wide and tall leaves are never stacked together.
  """

  name: ClassVar[str] = "muon"
  state_cls: ClassVar[type] = ScaleByMuonState
  orientation_matters: ClassVar[bool] = False

  def init(self, view: _matrix.MatrixView) -> tuple[jax.Array, ...]:
    """One array per extra state field, each with leading axes
    ``view.batch_shape``."""
    del view
    return ()

  def state_axes(self, view: _matrix.MatrixView
                 ) -> tuple[tuple[int | None, ...], ...]:
    """One entry per extra state field: for each axis of that field's leaf,
    the param axis whose sharding it shares on a device mesh (``None``: not
    sharded). Used to place the state like its param."""
    del view
    return ()

  def __call__(self, m: Stack, states: tuple[jax.Array, ...], count: jax.Array,
               transposed: bool) -> tuple[Stack, tuple[jax.Array, ...]]:
    """``(d, new_states)`` for a stack ``m`` of momentum matrices.

    Args:
      m: ``(k, rows, cols)`` canonical (``rows <= cols``) matrices, float32.
      states: the extra state stacks (leading axis ``k``).
      count: the 1-based step.
      transposed: whether the stack holds ``G^T`` of the ``(fan_in,
        fan_out)`` matrices.
    """
    raise NotImplementedError


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
    direction: Direction,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    shape_scale: str = "spectral",
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
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
  _checks.in_range(momentum, "momentum", 0.0, 1.0, high_open=True)
  _checks.boolean(nesterov, "nesterov")
  if shape_scale not in _matrix.SHAPE_SCALES:
    raise ValueError(
        f"Unknown shape_scale {shape_scale!r}: use one of "
        f"{_matrix.SHAPE_SCALES}.")
  _checks.floating_dtype(mu_dtype, "mu_dtype")
  tuning = _tuning.resolve(tuning)
  plan = _mesh.MeshPlan(ns_mesh_axis, mesh)
  who = f"scale_by_{direction.name}"
  _layout.check_exclusive(layout, who, batch_axes=batch_axes,
                          matrix_axes=matrix_axes)
  if layout is not None:
    matrix_axes = layout.spec
  matrix_axes = _matrix.resolve_matrix_axes(matrix_axes)

  def views_of(leaves_with_paths):
    return [_matrix.matrix_view(p, x, batch_axes, who, matrix_axes)
            for p, x in leaves_with_paths]

  def init_fn(params):
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    params_flat = [x for _, x in leaves_with_paths]
    views = views_of(leaves_with_paths)
    # zeros_like keeps the param's sharding (eagerly, and inside jit under
    # Explicit axes); the extra state is placed by the direction's
    # state_axes.
    mu = [jnp.zeros_like(p, dtype=momentum_dtype(p.dtype, mu_dtype))
          for p in params_flat]
    extras = [_init_extras(direction, v, p) for v, p in zip(views, params_flat)]
    fields = [treedef.unflatten([e[i] for e in extras])
              for i in range(len(direction.state_cls._fields) - 2)]
    return direction.state_cls(
        jnp.zeros([], jnp.int32), treedef.unflatten(mu), *fields)

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    beta = jnp.asarray(momentum)
    mu = jax.tree.map(lambda g, m: _ema_step(m, g, beta), updates, state.mu)
    if nesterov:
      m_tree = jax.tree.map(
          lambda g, m: (1 - beta) * g.astype(jnp.float32) + beta * m,
          updates, mu)
    else:
      m_tree = mu
    paths_and_m, treedef = jax.tree_util.tree_flatten_with_path(m_tree)
    grads = treedef.flatten_up_to(updates)
    extras = [treedef.flatten_up_to(t) for t in state[2:]]
    views = views_of(
        [(p, g) for (p, _), g in zip(paths_and_m, grads)])
    ms = [m for _, m in paths_and_m]
    dirs, new_extras = plan.run(
        lambda split, ms, extras, count: _directions_by_group(
            direction, ms, extras, views, count, split, tuning),
        (ms, extras, count), (grads, extras))
    out = [(d * v.shape_scale(shape_scale)).astype(g.dtype)
           for d, v, g in zip(dirs, views, grads)]
    new_state = direction.state_cls(
        count, mu, *[treedef.unflatten(e) for e in new_extras])
    return treedef.unflatten(out), new_state

  return optax.GradientTransformation(init_fn, update_fn)


def _init_extras(direction: Direction, view: _matrix.MatrixView, param):
  """The direction's extra state for one leaf, placed like the param."""
  leaves = direction.init(view)
  axes = direction.state_axes(view)
  if not axes:
    return leaves
  return tuple(_mesh.MeshPlan.place(x, param, a) for x, a in zip(leaves, axes))


def _directions_by_group(direction, ms, extras, views, count, split, tuning):
  """Groups same-shape matrices into stacks, runs the direction on each
  stack (split over the mesh when ``split`` is given), and puts the results
  back leaf by leaf."""
  groups: dict[Any, list[int]] = {}
  for i, v in enumerate(views):
    key = v.canonical_shape
    if direction.orientation_matters:
      key = key + (v.transposed,)
    groups.setdefault(key, []).append(i)

  dirs: list[Any] = [None] * len(views)
  new_extras = [[None] * len(views) for _ in extras]
  for idxs in groups.values():
    transposed = views[idxs[0]].transposed
    stacks = [views[i].to_matrices(ms[i].astype(jnp.float32)) for i in idxs]
    m_stack = _concat(stacks)
    state_stacks = tuple(
        _concat([e[i].reshape((views[i].num_matrices,) + e[i].shape[
            len(views[i].batch_axes):]) for i in idxs]) for e in extras)
    total = m_stack.shape[0]
    if split is not None:
      m_stack = _mesh.split_stack(m_stack, split)
      state_stacks = tuple(_mesh.split_stack(s, split) for s in state_stacks)
      d_stack, new_states = direction(m_stack, state_stacks, count, transposed)
      d_stack = _mesh.unsplit_stack(d_stack, split, total)
      new_states = tuple(_mesh.unsplit_stack(s, split, total)
                         for s in new_states)
    elif tuning.loops_stacks():
      d_stack, new_states = _one_matrix_at_a_time(
          direction, m_stack, state_stacks, count, transposed,
          tuning.loop_min_entries)
    else:
      d_stack, new_states = direction(m_stack, state_stacks, count, transposed)
    lo = 0
    for i, s in zip(idxs, stacks):
      hi = lo + s.shape[0]
      dirs[i] = views[i].from_matrices(d_stack[lo:hi])
      for f, st in enumerate(new_states):
        new_extras[f][i] = st[lo:hi].reshape(extras[f][i].shape).astype(
            extras[f][i].dtype)
      lo = hi
  return dirs, new_extras


def _concat(xs):
  return xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=0)


def _one_matrix_at_a_time(direction, m, states, count, transposed,
                          min_entries):
  """Runs a stack through ``direction`` as a loop over its matrices.

  A direction is independent per matrix, so this changes no result. On CPU
  it is faster than one batched call (measured in benchmarks/README.md):
  the batched call runs each Newton–Schulz matmul over the whole stack before
  the next, streaming every intermediate through memory, while a loop keeps
  one matrix's intermediates in cache. Stacks of one matrix, and of matrices
  smaller than ``min_entries``, run as one call.
  """
  k, rows, cols = m.shape
  if k == 1 or rows * cols < min_entries:
    return direction(m, states, count, transposed)

  def one(args):
    m_i, states_i = args
    d, new = direction(m_i[None], tuple(s[None] for s in states_i), count,
                       transposed)
    return d[0], tuple(s[0] for s in new)

  return jax.lax.map(one, (m, tuple(states)))
