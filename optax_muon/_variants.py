"""The Muon family's directions and their ``scale_by_*`` transformations.

Each variant is a small frozen dataclass, a :class:`~optax_muon._skeleton.
Direction`, whose fields are exactly the hyperparameters it uses: it says
how a stack of momentum matrices becomes a stack of update directions (and
what extra state that needs). Momentum, the matrix view, stacking, the mesh
and the shape scale live in ``_skeleton`` and ``_mesh``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from optax_muon import _checks, _layout, _matrix, _mesh, _skeleton, _tuning
from optax_muon import _newton_schulz as ns

# ----------------------------------------------------------------- Muon ----


@dataclasses.dataclass(frozen=True)
class MuonDirection(_skeleton.Direction):
  """``orthogonalize(M)``."""

  orthogonalize: ns.NewtonSchulz
  name = "muon"

  def __call__(self, m, states, count, transposed):
    del count, transposed
    return self.orthogonalize(m), states


def scale_by_muon(
    momentum: float = 0.95,
    *,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  r"""Muon's direction: orthogonalised momentum times the shape scale.

  For every leaf (seen as ``(fan_in, fan_out)`` matrices)::

    buf = beta * buf + (1 - beta) * g
    M = (1 - beta) * g + beta * buf        (nesterov)
    u = orthogonalize(M) * s

  Every leaf it is given must be a floating matrix (or a stack of them);
  route the rest elsewhere, e.g. with :func:`optax_muon.muon`.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks", 2024. https://kellerjordan.github.io/posts/muon/

  Args:
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`optax_muon.NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: update RMS about 0.2, so AdamW's learning rate and weight
      decay transfer) or ``"none"``.
    mu_dtype: floating dtype of the momentum buffer; ``None`` is the param's
      dtype promoted to at least float32.
    batch_axes: axes of a leaf that index separate matrices (stacked or
      scanned layers): ``None``, axes for every leaf, or a function
      ``(path, leaf) -> axes``.
    matrix_axes: the fan-in and fan-out axes of leaves whose layout the
      default view does not fit: ``None``, a function ``(path, leaf) ->
      spec or None``, a tree of specs (or ``None``) like the params, or one
      spec for every leaf; a spec is :class:`optax_muon.MatrixAxes` or
      ``optax.contrib.MuonDimensionNumbers`` (see
      :func:`optax_muon.matrix_view`; ``optax_muon.per_head`` orthogonalises
      attention per head).
    layout: an :class:`optax_muon.Layout` from
      :func:`optax_muon.infer_layout`: every leaf's fan-in, fan-out and
      batch axes as the model's computation uses them, in place of
      ``batch_axes`` and ``matrix_axes`` (giving either with it is a
      ``ValueError``).
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over: each stack of same-shape matrices is padded to a
      multiple of the axis size and sharded along it, so each device
      orthogonalises only its share, and the results go back to each
      param's own sharding (as the reference PyTorch Muon splits params
      across ranks and all-gathers them). Params may be laid out in any
      way (replicated, FSDP, tensor-parallel).
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``). With neither, the update raises ``ValueError``.
    tuning: speed choices (:class:`optax_muon.Tuning`); ``None`` is the
      backend's defaults. They change no result beyond rounding.

  Returns:
    A ``GradientTransformation`` whose state is :class:`ScaleByMuonState`.
  """
  tuning = _tuning.resolve(tuning)
  direction = MuonDirection(ns.NewtonSchulz(
      steps=ns_steps, coeffs=ns_coeffs, dtype=ns_dtype, tuning=tuning))
  return _skeleton.scale_by_muon_family(
      direction, momentum=momentum, nesterov=nesterov, shape_scale=shape_scale,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout, ns_mesh_axis=ns_mesh_axis,
      mesh=mesh, tuning=tuning)


# -------------------------------------------------------------- AdaMuon ----


class ScaleByAdaMuonState(NamedTuple):
  """State of :func:`scale_by_adamuon`."""
  count: jax.Array
  mu: optax.Updates
  # per matrix: sqrt of the EMA of ||M||_F^2 / (fan_in * fan_out), i.e. of
  # the mean square entry (kept as the root, which stays finite in float32
  # for any finite momentum), shape = batch axes
  nu: optax.Updates


def _divide_by_max(xs):
  """``(xs / s, s)`` with ``s`` the elementwise largest of ``xs`` (1 where
  all are 0): scalars brought near 1 so their squares neither overflow nor
  underflow."""
  s = functools.reduce(jnp.maximum, xs)
  safe = jnp.where(s > 0, s, jnp.ones_like(s))
  return [x / safe for x in xs], s


def ema_rms(rms: jax.Array, norm: jax.Array, beta2) -> jax.Array:
  """``sqrt(beta2 * rms^2 + (1 - beta2) * norm^2)`` without forming the
  squares, so it is finite and accurate for norms from 1e-30 to 1e30 (and the
  float32 limits) alike."""
  (r, n), s = _divide_by_max([rms, norm])
  return s * jnp.sqrt(beta2 * jnp.square(r) + (1 - beta2) * jnp.square(n))


def _relative_ratio(num: jax.Array, den: jax.Array, eps) -> jax.Array:
  """``num / (den + eps * max(num, den))`` for non-negative inputs, and 0
  where both are 0: ``eps`` guards the division relative to the operands, so
  it never bites at small (or large) scales."""
  (n, d), _ = _divide_by_max([num, den])
  return n / (d + eps)


def _entry_rms(m: jax.Array) -> jax.Array:
  """``||M||_F / sqrt(rows * cols)`` per matrix, finite for finite ``M``:
  the largest entry is divided out before squaring, and the mean of the
  squares is at most 1."""
  amax = jnp.max(jnp.abs(m), axis=(-2, -1))
  safe = jnp.where(amax > 0, amax, jnp.ones_like(amax))
  return amax * jnp.sqrt(jnp.mean(
      jnp.square(m / safe[..., None, None]), axis=(-2, -1)))


@dataclasses.dataclass(frozen=True)
class AdaMuonDirection(_skeleton.Direction):
  """``orthogonalize(M) * n / (sqrt(v_hat) + eps max(n, sqrt(v_hat)))``."""

  orthogonalize: ns.NewtonSchulz
  beta2: Any
  eps: Any
  bias_correction: bool
  name = "adamuon"
  state_cls = ScaleByAdaMuonState

  def init(self, view):
    return (jnp.zeros(view.batch_shape, jnp.float32),)

  def state_axes(self, view):
    return (view.batch_axes,)

  def __call__(self, m, states, count, transposed):
    del transposed
    (rms,) = states
    # All matrices of a stack share (rows, cols), so measuring n as the
    # entries' RMS rather than ||M||_F changes n and sqrt(v) by one constant
    # and the factor not at all; unlike ||M||_F it cannot overflow.
    norm = _entry_rms(m)
    rms = ema_rms(rms, norm, self.beta2)
    rms_hat = (rms / jnp.sqrt(1 - self.beta2 ** count) if self.bias_correction
               else rms)
    factor = _relative_ratio(norm, rms_hat, self.eps)
    return self.orthogonalize(m) * factor[:, None, None], (rms,)


def scale_by_adamuon(
    momentum: float = 0.95,
    *,
    beta2: float = 0.995,
    eps: float = 1e-8,
    bias_correction: bool = True,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  r"""AdaMuon: Muon scaled by a NovoGrad-style second moment per matrix.

  One scalar per matrix, an EMA of the squared Frobenius norm of the
  momentum; the orthogonalised update grows or shrinks with how large the
  current momentum is against that running RMS::

    n = ||M||_F
    v = beta2 * v + (1 - beta2) * n^2
    v_hat = v / (1 - beta2^t)          (bias_correction)
    u = orthogonalize(M) * n / (sqrt(v_hat) + eps * max(n, sqrt(v_hat))) * s

  The state keeps ``sqrt(v)`` for ``n`` measured as the entries' RMS,
  ``||M||_F / sqrt(fan_in * fan_out)`` (the factor ``n / sqrt(v_hat)`` is the
  same), updated without forming any square (:func:`ema_rms`); ``eps`` is
  relative to the operands and ``0 / 0`` is 0. So the update is the same for
  the momentum ``M`` and ``c M`` at any scale ``c`` (1e-30 to 1e30 in
  float32), zero for zero momentum, and finite, with a finite state, for any
  finite momentum. Since ``v >= (1 - beta2) n^2`` the factor is at most
  ``sqrt((1 - beta2^t) / (1 - beta2))``.

  Departures from the seed's code (MuonVariants): the seed has no bias
  correction, which makes the first updates about ``1/sqrt(1 - beta2)``
  (14x) too large -- ``bias_correction=False`` restores it; and the seed
  rescales the update to unit Frobenius norm, which makes its step about
  ``sqrt(min(m, n))`` times smaller than Muon's at the same learning rate --
  here the factor multiplies Muon's own update, so Muon's learning rate
  transfers.

  References:
    Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
    Moments for Training of Deep Networks" (NovoGrad), 2019.
    https://arxiv.org/abs/1905.11286

  Args:
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    beta2: EMA coefficient of the squared-norm second moment, in ``[0, 1)``.
    eps: relative guard of the division, ``sqrt(v_hat) + eps * max(n,
      sqrt(v_hat))`` (an absolute epsilon would make the step depend on the
      gradient's scale); ``>= 0``.
    bias_correction: divide ``v`` by ``1 - beta2^t``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`optax_muon.NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"``, ``"rms"`` or ``"none"``; see
      :func:`scale_by_muon`.
    mu_dtype: floating dtype of the momentum buffer; ``None`` is the param's
      dtype promoted to at least float32.
    batch_axes: axes of a leaf that index separate matrices; see
      :func:`scale_by_muon`.
    matrix_axes: fan-in and fan-out axes of leaves; see
      :func:`scale_by_muon`.
    layout: an :class:`optax_muon.Layout` (:func:`optax_muon.infer_layout`)
      giving every leaf's matrix axes, in place of ``batch_axes`` and
      ``matrix_axes``; see :func:`scale_by_muon`.
    ns_mesh_axis: mesh axis name(s) to split the stacked matrices over; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh.
    tuning: speed choices (:class:`optax_muon.Tuning`); ``None`` is the
      backend's defaults.

  Returns:
    A ``GradientTransformation`` whose state is :class:`ScaleByAdaMuonState`.
  """
  _checks.in_range(beta2, "beta2", 0.0, 1.0, high_open=True)
  _checks.in_range(eps, "eps", 0.0)
  _checks.boolean(bias_correction, "bias_correction")
  tuning = _tuning.resolve(tuning)
  direction = AdaMuonDirection(
      ns.NewtonSchulz(steps=ns_steps, coeffs=ns_coeffs, dtype=ns_dtype,
                      tuning=tuning),
      beta2=beta2, eps=eps, bias_correction=bias_correction)
  return _skeleton.scale_by_muon_family(
      direction, momentum=momentum, nesterov=nesterov, shape_scale=shape_scale,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout, ns_mesh_axis=ns_mesh_axis,
      mesh=mesh, tuning=tuning)


# -------------------------------------------------------------- MomMuon ----


class ScaleByMomMuonState(NamedTuple):
  """State of :func:`scale_by_mommuon`."""
  count: jax.Array
  mu: optax.Updates
  # per matrix: the running whitening preconditioner at the matrix's small
  # side, shape = batch axes + (k, k), k = min(fan_in, fan_out)
  precond: optax.Updates


class ScaleByMomMuonGramState(NamedTuple):
  """State of :func:`scale_by_mommuon` with ``ns_average="gram"``."""
  count: jax.Array
  mu: optax.Updates
  precond: optax.Updates  # inverse square root of ``gram``, batch + (k, k)
  gram: optax.Updates  # running average of G_n G_n^T, batch + (k, k)


def _small_gram(g_n):
  return ns._matmul(g_n, jnp.swapaxes(g_n, -1, -2), jax.lax.Precision.HIGHEST)


def _damped(y, damping):
  """``Y + damping * (tr(Y) / k) I``: caps the whitening's gain at about
  ``sqrt(k / (damping tr Y))`` for directions that ``Y`` barely has."""
  if isinstance(damping, (int, float)) and damping == 0:
    return y
  k = y.shape[-1]
  mean_eig = jnp.trace(y, axis1=-2, axis2=-1)[..., None, None] / k
  return y + damping * mean_eig * jnp.eye(k, dtype=y.dtype)


MOMMUON_AVERAGES = ("preconditioner", "gram")


def _whiten_steps(whiten_steps, ns_steps) -> int:
  """MomMuon's iteration count from ``whiten_steps`` and its deprecated
  synonym ``ns_steps`` (``None``: not given)."""
  if ns_steps is not None:
    # A whiten_steps at its default cannot be told from one not given (an
    # alias passes its own default through), so only another value clashes.
    if whiten_steps != 15:
      raise ValueError(
          f"scale_by_mommuon got whiten_steps={whiten_steps!r} and "
          f"ns_steps={ns_steps!r}: they are one setting (the inverse-square-"
          "root iterations); give only whiten_steps.")
    warnings.warn(
        "scale_by_mommuon(ns_steps=...) is deprecated: use whiten_steps= "
        "(it counts the coupled inverse-square-root iterations).",
        DeprecationWarning, stacklevel=3)
    whiten_steps = ns_steps
  return _checks.static_int(whiten_steps, "whiten_steps", low=1)


@dataclasses.dataclass(frozen=True)
class MomMuonDirection(_skeleton.Direction):
  """``P G_n`` with ``P`` a running whitening preconditioner."""

  whiten_steps: int
  ns_every: Any  # a Python int, or a traced int (inject_hyperparams)
  ns_beta: Any
  ns_average: str
  ns_damping: Any
  ns_rescale: bool
  name = "mommuon"

  @property
  def state_cls(self):
    return (ScaleByMomMuonGramState if self.ns_average == "gram"
            else ScaleByMomMuonState)

  def init(self, view):
    k = view.small_side
    fields = 2 if self.ns_average == "gram" else 1
    # One array per field: a state whose leaves share a buffer cannot be
    # donated (jax.jit(..., donate_argnums=...) refuses the same buffer
    # twice).
    return tuple(jnp.zeros(view.batch_shape + (k, k), jnp.float32)
                 for _ in range(fields))

  def state_axes(self, view):
    axes = view.batch_axes + (view.small_side_axis, None)
    return (axes,) * (2 if self.ns_average == "gram" else 1)

  def __call__(self, m, states, count, transposed):
    del transposed
    g_n = ns.normalize_frobenius(m, 1e-7)
    precond = states[0]
    # Per matrix: a zero momentum has nothing to whiten (inverse_sqrt of a
    # zero Gram matrix is 1.5^whiten_steps I), so it leaves the state as it is;
    # P = 0 means no refresh has set it yet, and the next nonzero momentum
    # does, on or off schedule (a zero first gradient, e.g. below a
    # zero-initialised layer, must not fix P at 1.5^whiten_steps I).
    unset = jnp.all(precond == 0, axis=(-2, -1), keepdims=True)
    zero = jnp.all(g_n == 0, axis=(-2, -1), keepdims=True)
    every = self.ns_every
    static_every = isinstance(every, int)
    scheduled = count == 1
    if static_every:
      if every > 0:
        scheduled = scheduled | ((count - 1) % every == 0)
    else:
      # A traced ns_every (optax.inject_hyperparams): the schedule is a
      # comparison with the step count, so it needs no Python value.
      every = jnp.asarray(every, jnp.int32)
      scheduled = scheduled | ((every > 0) & (
          (count - 1) % jnp.maximum(every, 1) == 0))
    beta, damping, steps = self.ns_beta, self.ns_damping, self.whiten_steps

    if self.ns_average == "gram":
      gram = states[1]
      y = _small_gram(g_n)
      gram_unset = jnp.all(gram == 0, axis=(-2, -1), keepdims=True)
      gram = jnp.where(zero, gram, jnp.where(
          gram_unset, y, beta * gram + (1 - beta) * y)).astype(gram.dtype)
      empty = jnp.all(gram == 0, axis=(-2, -1), keepdims=True)

      def refresh(p):
        z = ns.inverse_sqrt(_damped(gram, damping), steps)
        return jnp.where(empty, p, z).astype(p.dtype)
    else:

      def refresh(p):
        z = ns.inverse_sqrt(_damped(_small_gram(g_n), damping), steps)
        new = jnp.where(unset, z, jnp.where(
            scheduled, beta * p + (1 - beta) * z, p))
        return jnp.where(zero, p, new).astype(p.dtype)

    if static_every and every == 1:
      precond = refresh(precond)
    else:
      precond = jax.lax.cond(scheduled | jnp.any(unset & ~zero), refresh,
                             lambda p: p, precond)
    new_states = ((precond, gram) if self.ns_average == "gram"
                  else (precond,))
    u = ns._matmul(precond, g_n, jax.lax.Precision.HIGHEST)
    if self.ns_rescale:
      # P was whitened from an average of past Gram matrices (and may be
      # ns_every - 1 steps old), so ||P G_n||_F drifts away from sqrt(k), the
      # norm of an orthogonal k x n matrix: bring it back, so the step size
      # is set by the learning rate alone. A zero update stays zero.
      norm = ns.frobenius_norm(u)
      safe = jnp.where(norm > 0, norm, jnp.ones_like(norm))
      u = u * (jnp.sqrt(jnp.float32(u.shape[-2])) / safe)
    return u, new_states


def scale_by_mommuon(
    momentum: float = 0.95,
    *,
    whiten_steps: int = 15,
    ns_every: int = 5,
    ns_beta: float = 0.5,
    ns_average: str = "gram",
    ns_damping: float = 0.0,
    ns_rescale: bool = True,
    nesterov: bool = True,
    shape_scale: str = "spectral",
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
    ns_steps: int | None = None,
) -> optax.GradientTransformation:
  r"""MomMuon: a running Newton–Schulz whitening, refreshed every few steps.

  Newton–Schulz can produce the whitening preconditioner
  ``P ~ (G_n G_n^T)^{-1/2}`` instead of the orthogonalised gradient (SWAN's
  GradWhitening); MomMuon keeps that whitening over time and recomputes it
  only every ``ns_every`` steps, so the steps in between cost one small
  matmul. The defaults (``ns_average="gram"``) average the Gram matrices
  every step and whiten the average on refresh steps (Shampoo's recipe:
  statistics every step, the root every ``ns_every`` steps)::

    G_n = M / ||M||_F
    Ybar = G_n G_n^T  (t = 1)   else   ns_beta * Ybar + (1 - ns_beta) * G_n G_n^T
    on a refresh step (t = 1, or (t - 1) % ns_every == 0):
      P = inverse_sqrt(Ybar, whiten_steps)       (small side of G_n, k x k)
    U = P G_n
    u = U * sqrt(k) / ||U||_F * s                (ns_rescale)

  ``ns_every=0`` refreshes only on the first step. Refreshes run under
  ``lax.cond``: steps that do not refresh run no Newton–Schulz (a static
  ``ns_every=1`` refreshes unconditionally). ``ns_every`` may be traced
  (``optax.inject_hyperparams``): the schedule is a comparison with the step.

  ``ns_rescale`` brings the update to the Frobenius norm ``sqrt(k)`` of an
  orthogonal ``k x n`` matrix: ``P`` is whitened from an average of past
  Gram matrices and may be ``ns_every - 1`` steps old, so ``||P G_n||_F``
  drifts (measured on the lm example at ``ns_every=10``: validation loss
  2.93 without, 2.01 with). Muon's quintic Newton–Schulz stops short of
  orthogonal (its update's Frobenius norm is about ``0.7 sqrt(k)``), so at
  the same learning rate MomMuon's step is somewhat larger than Muon's.

  The defaults (``ns_average="gram", ns_beta=0.5, ns_every=5,
  ns_damping=0, ns_rescale=True``) are the best configuration measured on
  the examples' lm, image and implicit tasks that keeps the idea (a running
  whitening refreshed every few steps); README "MomMuon" has the runs and
  the loss / step-time trade-off of ``ns_every``.

  The seed's form (MuonVariants) is ``ns_average="preconditioner",
  ns_beta=0.9, ns_every=1, ns_rescale=False``: it averages the inverse square
  roots themselves::

    on a refresh step:
      Z = inverse_sqrt(G_n G_n^T, whiten_steps)
      P = Z  (first refresh)   else   ns_beta * P + (1 - ns_beta) * Z
    u = P G_n * s

  which keeps the huge gains of directions that were small in old gradients:
  on the lm example it reached validation loss 3.245 against Muon's 1.874.

  A matrix whose momentum is all zero gets a zero update and leaves ``P``
  unchanged (``Y = 0`` has no inverse square root; the iteration would
  return ``1.5^whiten_steps I``); until a nonzero momentum has set it, ``P``
  stays 0 and "first refresh" means the first step with a nonzero momentum,
  whether or not it is on the ``ns_every`` schedule.

  The coupled inverse-square-root iteration always runs in float32
  (``Precision.HIGHEST``): in bfloat16 it diverges (:func:`inverse_sqrt`),
  so MomMuon has no ``ns_dtype``. Its step count is ``whiten_steps`` (the
  coupled iteration's, default 15), not an orthogonalisation's ``ns_steps``
  (default 5): the two count different iterations, so MomMuon names its own.

  Departures from the seed's code (MuonVariants): the seed crashes on its
  first step (an unbound index); it applies ``P`` to the unnormalised
  momentum, so its step grows with the gradient (here ``G_n`` has unit
  Frobenius norm); and it always whitens the row side, which blows up by
  ``1.5^whiten_steps`` on tall matrices (here the preconditioner lives at the
  small side, ``k x k`` with ``k = min(fan_in, fan_out)``).

  References:
    Ma et al., "SWAN: SGD with Normalization and Whitening Enables
    Stateless LLM Training", 2024. https://arxiv.org/abs/2412.13148

  Args:
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    whiten_steps: steps of the coupled Newton–Schulz inverse-square-root
      iteration that computes the whitening preconditioner (an int >= 1).
    ns_every: refresh the preconditioner every this many steps (an int >= 0,
      or a traced int; 0: only on the first step).
    ns_beta: EMA coefficient of the average, in ``[0, 1)`` (0: use the fresh
      Gram matrix, or whitening, at every refresh).
    ns_average: ``"gram"`` (average the Gram matrices, whiten the average)
      or ``"preconditioner"`` (the seed: average the inverse square roots).
    ns_damping: whiten ``Y + ns_damping * (tr(Y) / k) I`` instead of ``Y``
      (Tikhonov damping relative to the mean eigenvalue; 0: none); ``>= 0``.
    ns_rescale: rescale ``P G_n`` to Frobenius norm ``sqrt(k)``, an
      orthogonal matrix's (``False``: the seed).
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    shape_scale: ``"spectral"``, ``"rms"`` or ``"none"``; see
      :func:`scale_by_muon`.
    mu_dtype: floating dtype of the momentum buffer; ``None`` is the param's
      dtype promoted to at least float32.
    batch_axes: axes of a leaf that index separate matrices; see
      :func:`scale_by_muon`.
    matrix_axes: fan-in and fan-out axes of leaves; see
      :func:`scale_by_muon`.
    layout: an :class:`optax_muon.Layout` (:func:`optax_muon.infer_layout`)
      giving every leaf's matrix axes, in place of ``batch_axes`` and
      ``matrix_axes``; see :func:`scale_by_muon`.
    ns_mesh_axis: mesh axis name(s) to split the stacked matrices over; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh.
    tuning: speed choices (:class:`optax_muon.Tuning`); ``None`` is the
      backend's defaults.
    ns_steps: deprecated synonym of ``whiten_steps`` (its name in 0.1.0;
      it counts the same inverse-square-root iterations, not
      orthogonalisation steps): giving it warns (``DeprecationWarning``) and
      sets ``whiten_steps``; giving it with a ``whiten_steps`` other than
      the default is a ``ValueError``.

  Returns:
    A ``GradientTransformation`` whose state is :class:`ScaleByMomMuonState`
    (:class:`ScaleByMomMuonGramState` with ``ns_average="gram"``).
  """
  whiten_steps = _whiten_steps(whiten_steps, ns_steps)
  ns_every = _checks.traceable_int(ns_every, "ns_every", low=0)
  _checks.in_range(ns_beta, "ns_beta", 0.0, 1.0, high_open=True)
  _checks.in_range(ns_damping, "ns_damping", 0.0)
  _checks.boolean(ns_rescale, "ns_rescale")
  if ns_average not in MOMMUON_AVERAGES:
    raise ValueError(
        f"ns_average must be one of {MOMMUON_AVERAGES}, got {ns_average!r}.")
  direction = MomMuonDirection(
      whiten_steps=whiten_steps, ns_every=ns_every, ns_beta=ns_beta,
      ns_average=ns_average, ns_damping=ns_damping, ns_rescale=ns_rescale)
  return _skeleton.scale_by_muon_family(
      direction, momentum=momentum, nesterov=nesterov, shape_scale=shape_scale,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout, ns_mesh_axis=ns_mesh_axis,
      mesh=mesh, tuning=tuning)


# ----------------------------------------------------------- OGSignMuon ----


@dataclasses.dataclass(frozen=True)
class OGSignDirection(_skeleton.Direction):
  """``|orthogonalize(M)| * sign(M)``."""

  orthogonalize: ns.NewtonSchulz
  name = "ogsignmuon"

  def __call__(self, m, states, count, transposed):
    del count, transposed
    return jnp.abs(self.orthogonalize(m)) * jnp.sign(m), states


def scale_by_ogsignmuon(
    momentum: float = 0.95,
    *,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  r"""OGSignMuon: Muon's magnitudes with the momentum's signs.

  After orthogonalising, keep the magnitudes and restore the signs of the
  momentum that went in (``sign(0) = 0``)::

    O = orthogonalize(M);   u = |O| * sign(M) * s

  Why it trails Muon on the lm example (measured on the same momentum,
  README "OGSignMuon"): the sign swap has the Frobenius norm of ``O`` but
  pulls the update back towards the momentum's own, low-rank spectrum (as
  signSGD does): its spectral norm is 3-4x ``O``'s and its stable rank 3-7
  against Muon's 40-54. The learning rate is then capped by the inflated
  top singular direction, and restoring ``O``'s spectral norm after the swap
  amounts to a larger learning rate, which did not help. ``momentum=0.9``
  improves the lm task (validation loss 2.10 against 2.31) but loses 3 dB on
  the implicit task.

  References:
    MuonVariants (the seed of this project), after Jordan et al., 2024.

  Args:
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`optax_muon.NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"``, ``"rms"`` or ``"none"``; see
      :func:`scale_by_muon`.
    mu_dtype: floating dtype of the momentum buffer; ``None`` is the param's
      dtype promoted to at least float32.
    batch_axes: axes of a leaf that index separate matrices; see
      :func:`scale_by_muon`.
    matrix_axes: fan-in and fan-out axes of leaves; see
      :func:`scale_by_muon`.
    layout: an :class:`optax_muon.Layout` (:func:`optax_muon.infer_layout`)
      giving every leaf's matrix axes, in place of ``batch_axes`` and
      ``matrix_axes``; see :func:`scale_by_muon`.
    ns_mesh_axis: mesh axis name(s) to split the stacked matrices over; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh.
    tuning: speed choices (:class:`optax_muon.Tuning`); ``None`` is the
      backend's defaults.

  Returns:
    A ``GradientTransformation`` whose state is :class:`ScaleByMuonState`.
  """
  tuning = _tuning.resolve(tuning)
  direction = OGSignDirection(ns.NewtonSchulz(
      steps=ns_steps, coeffs=ns_coeffs, dtype=ns_dtype, tuning=tuning))
  return _skeleton.scale_by_muon_family(
      direction, momentum=momentum, nesterov=nesterov, shape_scale=shape_scale,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout, ns_mesh_axis=ns_mesh_axis,
      mesh=mesh, tuning=tuning)


# -------------------------------------------------------------- NorMuon ----


class ScaleByNorMuonState(NamedTuple):
  """State of :func:`scale_by_normuon`."""
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates  # per output neuron: EMA of the update's mean square


@dataclasses.dataclass(frozen=True)
class NorMuonDirection(_skeleton.Direction):
  """``orthogonalize(M)`` normalised per output neuron, norm restored."""

  orthogonalize: ns.NewtonSchulz
  beta2: Any
  name = "normuon"
  state_cls = ScaleByNorMuonState
  orientation_matters = True

  def init(self, view):
    return (jnp.zeros(view.batch_shape + (view.fan_out,), jnp.float32),)

  def state_axes(self, view):
    return (view.batch_axes + (view.fan_out_axis,),)

  def __call__(self, m, states, count, transposed):
    del count
    (nu,) = states
    o = self.orthogonalize(m)
    # Output neurons are the fan_out axis: columns of (fan_in, fan_out), rows
    # of the transposed canonical matrix.
    fan_in_axis = -1 if transposed else -2
    nu = self.beta2 * nu + (1 - self.beta2) * jnp.mean(
        jnp.square(o), axis=fan_in_axis)
    scaled = o / (jnp.expand_dims(jnp.sqrt(nu), fan_in_axis) + 1e-10)
    o_norm = ns.frobenius_norm(o)
    s_norm = ns.frobenius_norm(scaled)
    ratio = o_norm / jnp.where(s_norm > 0, s_norm, jnp.ones_like(s_norm))
    return scaled * ratio, (nu,)


def scale_by_normuon(
    momentum: float = 0.95,
    *,
    beta2: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  r"""NorMuon: Muon with per-output-neuron second-moment normalisation.

  After orthogonalising, an EMA of each output neuron's mean-square update
  (in the Flax layout a column: the mean over fan-in) normalises the update,
  whose Frobenius norm is then restored::

    O = orthogonalize(M)
    v = beta2 * v + (1 - beta2) * mean_{fan_in}(O^2)
    O' = O / (sqrt(v) + 1e-10);   u = O' * ||O||_F / ||O'||_F * s

  References:
    Li et al., "NorMuon: Making Muon more efficient and scalable", 2025.
    https://arxiv.org/abs/2510.05491

  Args:
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    beta2: EMA coefficient of the per-neuron second moment, in ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`optax_muon.NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"``, ``"rms"`` or ``"none"``; see
      :func:`scale_by_muon`.
    mu_dtype: floating dtype of the momentum buffer; ``None`` is the param's
      dtype promoted to at least float32.
    batch_axes: axes of a leaf that index separate matrices; see
      :func:`scale_by_muon`.
    matrix_axes: fan-in and fan-out axes of leaves; see
      :func:`scale_by_muon`.
    layout: an :class:`optax_muon.Layout` (:func:`optax_muon.infer_layout`)
      giving every leaf's matrix axes, in place of ``batch_axes`` and
      ``matrix_axes``; see :func:`scale_by_muon`.
    ns_mesh_axis: mesh axis name(s) to split the stacked matrices over; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh.
    tuning: speed choices (:class:`optax_muon.Tuning`); ``None`` is the
      backend's defaults.

  Returns:
    A ``GradientTransformation`` whose state is :class:`ScaleByNorMuonState`.
  """
  _checks.in_range(beta2, "beta2", 0.0, 1.0, high_open=True)
  tuning = _tuning.resolve(tuning)
  direction = NorMuonDirection(
      ns.NewtonSchulz(steps=ns_steps, coeffs=ns_coeffs, dtype=ns_dtype,
                      tuning=tuning),
      beta2=beta2)
  return _skeleton.scale_by_muon_family(
      direction, momentum=momentum, nesterov=nesterov, shape_scale=shape_scale,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout, ns_mesh_axis=ns_mesh_axis,
      mesh=mesh, tuning=tuning)
