"""Running the Muon skeleton on a device mesh.

Everything here uses JAX's own SPMD partitioner: sharding constraints move
the stacked matrices between the params' layouts and the split over
``ns_mesh_axis``, ``init`` places the state like its param, and under
Explicit mesh axes the matrix work runs with those axes made Auto and hands
every output back with the sharding of the leaf it replaces. No collective
is written by hand; XLA inserts them from the shardings.

The skeleton's one entry point is :class:`MeshPlan`: ``plan.run(fn, args,
out_like)`` runs the per-step matrix work, calling ``fn(split, *args)`` with
the resolved :class:`Split` (or ``None``), and ``plan.place(x, param, axes)``
lays out fresh state in ``init``.

Under Auto mesh axes the layout of a jitted step's outputs is the
partitioner's choice. Where this JAX has ``jax.experimental.shard_alike``
(JAX 0.11.2 has none) each output is tied to the layout of the leaf it
replaces; without it the partitioner lays them out (results are the same,
but a state leaf may come back less sharded than it went in). Explicit mesh
axes (``jax.make_mesh``'s default) give exact layouts on every version.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

MeshAxis = Union[None, str, Sequence[str]]


class Split(NamedTuple):
  """Split the stacks' leading axis over mesh ``axes`` (``size`` devices)."""
  mesh: Any  # a jax.sharding.Mesh or AbstractMesh whose split axes are Auto
  axes: tuple[str, ...]
  size: int


def mesh_axes(ns_mesh_axis: MeshAxis) -> tuple[str, ...] | None:
  """``ns_mesh_axis`` as a tuple of axis names (``None`` stays ``None``)."""
  if ns_mesh_axis is None:
    return None
  axes = ((ns_mesh_axis,) if isinstance(ns_mesh_axis, str)
          else tuple(ns_mesh_axis))
  if not axes or not all(isinstance(a, str) and a for a in axes) or len(
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


class MeshPlan:
  """Where a Muon-family transformation's matrix work runs.

  Args:
    ns_mesh_axis: mesh axis name(s) to split the stacked matrices over, or
      ``None`` (no split; the partitioner still handles sharded params).
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``) at trace time.
  """

  def __init__(self, ns_mesh_axis: MeshAxis = None,
               mesh: jax.sharding.Mesh | None = None):
    self.axes = mesh_axes(ns_mesh_axis)
    self.ns_mesh_axis = ns_mesh_axis
    self.mesh = mesh
    if mesh is not None:
      _check_mesh(mesh, self.axes, "mesh=")

  def split(self) -> Split | None:
    """The mesh and axes to split stacks over; called while tracing.

    Inside a mesh context (``jax.set_mesh``) shardings are built on the
    context's mesh, whose axis types are the ones in force (Auto inside
    :meth:`run`); ``mesh=`` must then be that mesh. Without a context,
    ``mesh=`` is used with its split axes made Auto.
    """
    if self.axes is None:
      return None
    context = jax.sharding.get_abstract_mesh()
    mesh = self.mesh
    if mesh is None:
      if context.empty:
        raise ValueError(
            f"ns_mesh_axis={self.ns_mesh_axis!r} needs a device mesh, and "
            "there is none: pass mesh=... to the optimizer, or call it under "
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
      target = _auto_typed(mesh, self.axes)
    _check_mesh(target, self.axes, "the mesh")
    size = math.prod(target.shape[a] for a in self.axes)
    return Split(target, self.axes, size)

  def run(self, fn: Callable[..., Any], args: tuple, out_like: Any) -> Any:
    """``fn(split, *args)`` with Explicit mesh axes made Auto.

    Under Explicit axes (``jax.make_mesh``'s default) every op must have an
    unambiguous output sharding, which matrix reshapes, stacking and
    Newton–Schulz's contractions over a sharded axis do not have; inside,
    the partitioner is free to choose, and on the way out each output is
    resharded to the sharding of the matching leaf of ``out_like`` (the
    gradient for an update, the incoming state for a state). The mesh is the
    context's (``jax.set_mesh``) or, without one, the one the arrays carry.
    Without Explicit axes ``fn`` runs as it is and the partitioner lays out
    its outputs.
    """
    out_sharding = jax.tree.map(lambda x: jax.typeof(x).sharding, out_like)
    context = jax.sharding.get_abstract_mesh()
    if context.empty:
      meshes = {s.mesh for s in jax.tree.leaves(out_sharding)
                if isinstance(s, jax.sharding.NamedSharding)
                and not s.mesh.empty}
      explicit = tuple(a for m in meshes for a in m.explicit_axes)
    else:
      # Specs on the context mesh: arrays not yet placed on it (e.g. plain
      # host arrays) carry an empty mesh and come out replicated.
      out_sharding = jax.tree.map(lambda s: s.spec, out_sharding)
      explicit = context.explicit_axes
    if not explicit:
      return _tie_layouts(fn(self.split(), *args), out_like)
    return jax.sharding.auto_axes(
        lambda *a: fn(self.split(), *a), axes=tuple(dict.fromkeys(explicit)),
        out_sharding=out_sharding)(*args)

  @staticmethod
  def place(x: jax.Array, param: Any, axes: Sequence[int | None]
            ) -> jax.Array:
    """Puts a fresh state leaf on the devices the way ``param`` is placed.

    Args:
      x: the state leaf.
      param: its param (a concrete array, or a tracer inside ``jit``).
      axes: for each axis of ``x``, the param axis whose mesh axes it takes
        (``None``: not sharded along that axis).
    """
    concrete = getattr(param, "sharding", None)  # None for tracers
    if concrete is not None:
      sharding = (concrete if isinstance(concrete, jax.sharding.NamedSharding)
                  else None)
    else:
      # Known while tracing only for meshes with Explicit axes; under Auto
      # axes the partitioner decides the layout later.
      sharding = jax.typeof(param).sharding
      if not (isinstance(sharding, jax.sharding.NamedSharding)
              and sharding.mesh.explicit_axes):
        sharding = None
    if sharding is None:
      return x
    spec = tuple(sharding.spec)
    target = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec(
            *[None if a is None or a >= len(spec) else spec[a] for a in axes]))
    if concrete is None:
      return jax.sharding.reshard(x, target)
    # Built shard by shard from the host value, which is the same on every
    # process: safe on a mesh that spans several hosts.
    value = np.asarray(x)
    return jax.make_array_from_callback(
        value.shape, target, lambda index: value[index])


def _tie_layouts(new, old):
  """Asks the partitioner to lay out each leaf of ``new`` like the matching
  leaf of ``old`` (``jax.experimental.shard_alike``, where this JAX still
  has it); otherwise returns ``new`` as it is."""
  try:
    shard_alike = importlib.import_module("jax.experimental.shard_alike")
  except ImportError:
    return new
  if not jax.tree.leaves(new):
    return new
  return shard_alike.shard_alike(new, old)[0]


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


def _stack_spec(axes: tuple[str, ...], ndim: int):
  """Leading axis split over ``axes`` (unsplit if empty), the matrix axes
  left to the partitioner."""
  P = jax.sharding.PartitionSpec
  return P(axes or None, *([P.UNCONSTRAINED] * (ndim - 1)))


def split_stack(x: jax.Array, split: Split) -> jax.Array:
  """Pads the stack to a multiple of the split size and shards its leading
  axis over the split axes: each device holds ``k / size`` whole matrices.

  The stack is first pinned with its leading axis unsplit (each matrix laid
  out like its param), then the split axes move onto the leading axis one
  at a time: a replicated param costs a local slice, a sharded one an
  all-to-all per mesh axis it is sharded over. (Asking the partitioner for
  the whole move at once makes it replicate the stack first.)

  Padding matrices are zeros; every direction maps them to finite values
  (Newton–Schulz divides by ``||X|| + eps``), and :func:`unsplit_stack`
  drops them.
  """
  x = _constrain(x, split.mesh, _stack_spec((), x.ndim))
  pad = (-x.shape[0]) % split.size
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  for i in range(1, len(split.axes)):
    x = _constrain(x, split.mesh, _stack_spec(split.axes[:i], x.ndim))
  return _constrain(x, split.mesh, jax.sharding.PartitionSpec(split.axes))


def unsplit_stack(x: jax.Array, split: Split, total: int) -> jax.Array:
  """Undoes :func:`split_stack`: the split axes leave the leading axis one
  at a time, last first, and the padding is dropped.

  The matrix axes are left to the partitioner, which takes them from where
  the results go (the update added to the param): a sharded param gets only
  its own shard of each matrix (an all-to-all), a replicated one the whole
  matrix (an all-gather, like the reference PyTorch Muon's ``all_gather``).
  """
  for i in reversed(range(len(split.axes))):
    x = _constrain(x, split.mesh, _stack_spec(split.axes[:i], x.ndim))
  return x[:total]
