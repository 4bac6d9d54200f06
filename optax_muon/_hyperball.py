"""Hyperball: each weight matrix kept on the sphere of its initial norm.

Composable after any update direction (Muon, NorMuon, AdaMuon, OGSignMuon,
AdamW's): it takes the place of ``scale_by_learning_rate`` at the end of a
chain and turns the direction into a fixed-size step on the sphere.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_muon import _checks, _matrix, _mesh


class HyperballState(NamedTuple):
  """State of :func:`hyperball`.

  Attributes:
    count: int32 step count (for a learning-rate schedule), starts at 0.
    radius: per leaf, the radius ``R`` of each of its matrices (shape: the
      leaf's batch axes, ``()`` for one matrix), float32, fixed at init.
    from_zero: per leaf, like ``radius``: whether the matrix was all zeros
      at init (it then grows inside the ball of its radius, see
      :func:`hyperball`).
  """
  count: jax.Array
  radius: optax.Params
  from_zero: optax.Params


def _norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Frobenius norm over ``axes`` (kept as size-1 axes), in float32 or wider,
  without overflow or underflow of the squares."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  amax = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
  safe = jnp.where(amax > 0, amax, jnp.ones_like(amax))
  return amax * jnp.sqrt(jnp.sum(jnp.square(x / safe), axis=axes,
                                 keepdims=True))


def hyperball(
    learning_rate: optax.ScalarOrSchedule,
    *,
    zero_init_rms: float | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
) -> optax.GradientTransformation:
  r"""Hyperball: a step of fixed relative size on the sphere ``||W||_F = R``.

  Per matrix ``W`` of each leaf's matrix view (a stacked leaf: per layer or
  expert; see :func:`optax_muon.matrix_view`), with ``U`` the incoming
  update direction (e.g. :func:`scale_by_muon`'s) and ``R`` the matrix's
  Frobenius norm at ``init``::

    W' = W - lr * R * U / ||U||_F
    W_new = W' * R / ||W'||_F

  and the update returned is ``W_new - W``. So ``learning_rate`` is the
  step's size relative to the weight: ``||W' - W||_F = lr * R``, whatever
  the scale of ``U``, and ``||W||_F`` stays ``R`` (to rounding; ``R`` is
  kept in the state, not re-read from weights that drift). A zero ``U``
  leaves ``W`` unchanged (the update is exactly 0); a non-finite ``U`` makes
  the matrix's update NaN.

  Matrices that are all zeros at init (zero-initialised output projections,
  as in modded-nanogpt) have no norm to keep. They get the radius of a
  matrix with entries of RMS ``zero_init_rms`` (default ``1/sqrt(fan_in)``,
  the RMS of LeCun-normal init, Flax's default for ``Dense`` and
  ``Linear``), ``R = zero_init_rms * sqrt(fan_in * fan_out)``, and grow from
  zero by steps of size ``lr * R`` inside the ball of that radius
  (``W_new = W' * min(1, R / ||W'||_F)``): they start at zero, as the model
  intends, and once they reach the sphere they stay on or inside it.

  Learning rate from a tuned Muon: ``lr`` is the relative step size that
  decoupled weight decay reaches only at equilibrium, ``sqrt(2 lr wd)``
  (Kosson et al., "Rotational Equilibrium", 2024,
  https://arxiv.org/abs/2305.17212), hence Levanter's rule ``lr_H ~
  sqrt(lr * wd)``. Without weight decay, Muon's relative step at init is
  its ``lr`` itself (spectral shape scale, LeCun-init weights), so a tuned
  Muon ``lr`` is a starting point (docs/ALGORITHMS.md, "Hyperball").
  Decoupled weight decay before it only changes the direction (its radial
  part is projected away); it is not needed.

  Apply a learning-rate schedule through ``learning_rate``, not by scaling
  the update afterwards: ``W + c (W_new - W)`` with ``c < 1`` lies inside
  the sphere.

  References:
    Wen, Dang, Lyu, Ma, Liang, "Fantastic Pretraining Optimizers and Where
    to Find Them II: From Weight Decay to Hyperball Optimization", 2025.
    https://whenwen.github.io/wd_blog/public/hyperball-part-1.html ;
    Levanter's ``optim/muonh.py``, https://github.com/marin-community/levanter

  Args:
    learning_rate: the step's size relative to each matrix's radius (a
      float ``>= 0`` or a schedule of the step count).
    zero_init_rms: entry RMS that sets the radius of matrices that are zero
      at init (``> 0``); ``None``: ``1/sqrt(fan_in)`` of each.
    batch_axes: axes of a leaf that index separate matrices, as for
      :func:`scale_by_muon` (one radius per matrix).
    matrix_axes: fan-in / fan-out axes of leaves the default view does not
      fit, as for :func:`scale_by_muon`.

  Returns:
    A ``GradientTransformation`` whose state is :class:`HyperballState`; its
    ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, optax_muon as om
    >>> params = {"w": jnp.eye(4)}
    >>> tx = optax.chain(om.scale_by_muon(), om.hyperball(0.1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((4, 4))}, state, params)
    >>> w = optax.apply_updates(params, updates)["w"]
    >>> print(f"{float(jnp.linalg.norm(w)):.4f}")
    2.0000
  """
  _checks.in_range(learning_rate, "learning_rate", 0.0)
  if zero_init_rms is not None:
    _checks.in_range(zero_init_rms, "zero_init_rms", 0.0)
    if not zero_init_rms > 0:
      raise ValueError(
          f"zero_init_rms must be > 0 (or None for 1/sqrt(fan_in)), got "
          f"{zero_init_rms!r}.")
  matrix_axes = _matrix.resolve_matrix_axes(matrix_axes)

  def view_of(path, leaf):
    return _matrix.matrix_view(path, leaf, batch_axes, "hyperball",
                               matrix_axes)

  def init_fn(params):
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    radii, zeros = [], []
    for path, p in leaves_with_paths:
      view = view_of(path, p)
      r = _norm(p, view.matrix_axes).reshape(view.batch_shape)
      rms = (1 / math.sqrt(view.fan_in) if zero_init_rms is None
             else zero_init_rms)
      target = rms * math.sqrt(view.fan_in * view.fan_out)
      z = r == 0
      r = jnp.where(z, jnp.asarray(target, r.dtype), r).astype(jnp.float32)
      axes = tuple(range(len(view.batch_axes)))
      radii.append(_mesh.MeshPlan.place(r, p, view.batch_axes)
                   if axes else r)
      zeros.append(_mesh.MeshPlan.place(z, p, view.batch_axes)
                   if axes else z)
    return HyperballState(jnp.zeros([], jnp.int32),
                          treedef.unflatten(radii), treedef.unflatten(zeros))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "hyperball needs the params (it keeps each matrix's norm): call "
          "update(updates, state, params).")
    lr = (learning_rate(state.count) if callable(learning_rate)
          else learning_rate)
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(updates)
    ps = treedef.flatten_up_to(params)
    radii = treedef.flatten_up_to(state.radius)
    zeros = treedef.flatten_up_to(state.from_zero)
    out = []
    for (path, u), p, r, z in zip(leaves_with_paths, ps, radii, zeros):
      view = view_of(path, p)
      axes = view.matrix_axes
      r = jnp.expand_dims(r, axes)
      z = jnp.expand_dims(z, axes)
      acc = jnp.promote_types(jnp.promote_types(p.dtype, u.dtype),
                              jnp.float32)
      w, d = p.astype(acc), u.astype(acc)
      d_norm = _norm(d, axes)
      # A NaN norm counts as moving, so a non-finite direction gives a NaN
      # update (as every Muon-family leaf does), not a silent zero.
      moving = d_norm != 0
      unit = d / jnp.where(moving, d_norm, jnp.ones_like(d_norm))
      w1 = w - (lr * r).astype(acc) * unit
      w1_norm = _norm(w1, axes)
      scale = r / jnp.where(w1_norm > 0, w1_norm, jnp.ones_like(w1_norm))
      scale = jnp.where(z, jnp.minimum(scale, 1), scale)
      step = jnp.where(moving, w1 * scale.astype(acc) - w, 0)
      out.append(step.astype(u.dtype))
    count = optax.safe_increment(state.count)
    return treedef.unflatten(out), HyperballState(
        count, state.radius, state.from_zero)

  return optax.GradientTransformation(init_fn, update_fn)
