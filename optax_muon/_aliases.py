"""Ready optimizers: a Muon-family chain for hidden matrices, AdamW for the rest.

Each alias is::

  optax.multi_transform(
      {"muon": chain(scale_by_<variant>, decayed_weights, scale_by_lr),
       "adamw": in_float32(optax.adamw(...))},
      labels)

AdamW runs on params and gradients promoted to at least float32
(:func:`in_float32`): for bfloat16 and float16 params its moments are float32
(its first moment in ``mu_dtype`` when that is given), like Muon's momentum,
and its updates come back in the gradients' dtype.

Use with ``optax.inject_hyperparams`` by naming the static arguments:
``optax.inject_hyperparams(om.muon, static_args=om.static_args(om.muon))``.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from optax_muon import (
  _checks,
  _hyperball,
  _labels,
  _layout,
  _matrix,
  _mesh,
  _tuning,
  _variants,
  _weight_decay,
)
from optax_muon import _newton_schulz as ns

_STATIC = ("ns_steps", "ns_dtype", "mu_dtype", "param_labels",
           "batch_axes", "matrix_axes", "mesh", "tuning")


def static_args(alias) -> tuple[str, ...]:
  """The arguments of ``alias`` that ``optax.inject_hyperparams`` must not
  turn into arrays or schedules.

  They are the step count ``ns_steps`` (a Python int that shapes the
  computation; MomMuon's ``ns_every`` may be injected), dtypes (classes
  look like callables), ``param_labels`` / ``batch_axes`` / ``matrix_axes``
  (functions or trees), ``mesh`` (a ``Mesh`` is callable, as a context
  decorator) and ``tuning``.

  With bfloat16 or float16 params also pass
  ``hyperparam_dtype=jnp.float32``: by default ``inject_hyperparams`` stores
  every hyperparameter in the params' dtype, which turns ``momentum=0.95``
  into 0.9492 and ``beta2=0.995`` into 0.9961 in bfloat16.

  Example:
    >>> import optax, optax_muon as om
    >>> print(*om.static_args(om.muon))
    ns_steps ns_dtype mu_dtype param_labels batch_axes matrix_axes mesh tuning
    >>> tx = optax.inject_hyperparams(
    ...     om.muon, static_args=om.static_args(om.muon))(learning_rate=0.02)
  """
  params = inspect.signature(alias).parameters
  return tuple(name for name in _STATIC if name in params)


def _promote_to_float32(tree):
  return jax.tree.map(
      lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def in_float32(inner: optax.GradientTransformation
               ) -> optax.GradientTransformation:
  """Runs ``inner`` on params and gradients promoted to at least float32 and
  casts its updates back to the gradients' dtypes.

  Its state is then float32 for bfloat16 and float16 params, as Muon's
  momentum is. This is what keeps AdamW finite for float16 params: in
  float16 its ``eps = 1e-8`` rounds to 0, so a gradient small enough for
  ``g^2`` to underflow gives ``0 / 0``, and ``g^2`` overflows above
  ``g = 256``.
  """

  def init_fn(params):
    return inner.init(_promote_to_float32(params))

  def update_fn(updates, state, params=None):
    new, state = inner.update(
        _promote_to_float32(updates), state,
        None if params is None else _promote_to_float32(params))
    return jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _alias(scale, *, learning_rate, weight_decay, cautious_weight_decay,
           adamw_learning_rate, adamw_b1, adamw_b2, adamw_eps,
           adamw_weight_decay, param_labels, mu_dtype, batch_axes,
           matrix_axes=None, layout=None, hyperball=False,
           zero_init_rms=None):
  """The ``multi_transform`` every alias returns, arguments checked.

  ``scale`` is the variant's ``scale_by_*`` with every argument but the
  routing ones bound (``functools.partial``); this helper gives it
  ``batch_axes``, ``matrix_axes`` and ``layout``, so that an alias needs
  only to pass its own ``param_labels``, ``batch_axes``, ``matrix_axes`` and
  ``layout`` here. (An already built transformation is accepted too, without
  ``layout``.) With ``hyperball`` the Muon chain ends in :func:`hyperball`
  (a step of relative size ``learning_rate`` on each matrix's sphere, seeing
  the same matrices) instead of ``scale_by_learning_rate``.
  """
  func = getattr(scale, "func", scale)
  who = ("om." + getattr(func, "__name__", "alias").removeprefix("scale_by_")
         + ("h" if hyperball else ""))
  _layout.check_exclusive(layout, who, param_labels=param_labels,
                          batch_axes=batch_axes, matrix_axes=matrix_axes)
  _checks.in_range(weight_decay, "weight_decay", 0.0)
  _checks.boolean(cautious_weight_decay, "cautious_weight_decay")
  _checks.in_range(adamw_b1, "adamw_b1", 0.0, 1.0, high_open=True)
  _checks.in_range(adamw_b2, "adamw_b2", 0.0, 1.0, high_open=True)
  _checks.in_range(adamw_eps, "adamw_eps", 0.0)
  _checks.in_range(adamw_weight_decay, "adamw_weight_decay", 0.0)
  if isinstance(scale, optax.GradientTransformation):
    if layout is not None:
      raise ValueError(
          f"{who}: layout= needs the scale_by_* function, not a built "
          "transformation: pass functools.partial(scale_by_..., ...) to "
          "_alias.")
  elif layout is not None:
    scale = scale(layout=layout)
  else:
    scale = scale(batch_axes=batch_axes, matrix_axes=matrix_axes)
  if layout is not None:
    param_labels, matrix_axes = layout.labels, layout.spec
  muon_chain = optax.chain(
      scale,
      _weight_decay.decayed_weights(weight_decay, cautious_weight_decay),
      _hyperball.hyperball(
          learning_rate, zero_init_rms=zero_init_rms, batch_axes=batch_axes,
          matrix_axes=matrix_axes) if hyperball
      else optax.scale_by_learning_rate(learning_rate),
  )
  adamw = in_float32(optax.adamw(
      adamw_learning_rate, b1=adamw_b1, b2=adamw_b2, eps=adamw_eps,
      weight_decay=adamw_weight_decay, mu_dtype=mu_dtype))
  return optax.multi_transform(
      {_labels.MUON: muon_chain, _labels.ADAMW: adamw},
      _labels.resolve_labels(param_labels, batch_axes, matrix_axes))


def muon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adamw_b1: float = 0.9,
    adamw_b2: float = 0.95,
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float = 0.0,
    param_labels: _labels.ParamLabels = None,
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  """Muon for hidden matrices, AdamW for everything else.

  Hidden matrices (as labelled by ``param_labels``, by default
  :func:`muon_labels`: weight matrices that are not embeddings or output
  heads) get :func:`scale_by_muon`, decoupled weight decay and the learning
  rate; every other leaf (embeddings, heads, biases, norm scales) gets
  ``optax.adamw``. The Muon step equals Keller Jordan's PyTorch ``Muon``
  (``muon_update``) in the Flax layout.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks", 2024. https://kellerjordan.github.io/posts/muon/

  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum (other leaves, even ones
  batched with it, are not affected). To skip such steps wrap the optimizer
  in ``optax.apply_if_finite(..., max_consecutive_errors=k)``.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays that
  ``orbax.checkpoint`` saves and restores as it is.

  Args:
    learning_rate: Muon-chain learning rate (a float or a schedule).
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: AdamW's learning rate and weight decay transfer) or
      ``"none"``.
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), scaled
      by the learning rate: ``p <- p - lr * (u + weight_decay * p)``.
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient, in ``[0, 1)``.
    adamw_b2: AdamW's second-moment coefficient, in ``[0, 1)``.
    adamw_eps: AdamW's epsilon (``>= 0``).
    adamw_weight_decay: AdamW's decoupled weight decay (``>= 0``).
    param_labels: ``None`` (use :func:`muon_labels` with this alias's
      ``batch_axes`` and ``matrix_axes``), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under
      ``optax.inject_hyperparams``).
    mu_dtype: floating dtype of the momentum buffer and of AdamW's first
      moment; ``None`` is the param's dtype promoted to at least float32.
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
      :func:`optax_muon.infer_layout` (every leaf's label and matrix axes,
      read from the model's computation), in place of ``param_labels``,
      ``batch_axes`` and ``matrix_axes``: giving any of them with it is a
      ``ValueError``.
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over, so that each device orthogonalises only its share; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``).
    tuning: speed choices (:class:`Tuning`); ``None`` is the backend's
      defaults. They change no result beyond rounding.

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optax_muon as om
    >>> params = {"hidden": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = om.muon(0.02)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> om.muon_labels(params)["hidden"]
    {'bias': 'adamw', 'kernel': 'muon'}
  """
  return _alias(
      functools.partial(
          _variants.scale_by_muon,
          momentum, nesterov=nesterov,
          ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
          shape_scale=shape_scale,
          mu_dtype=mu_dtype, ns_mesh_axis=ns_mesh_axis,
          mesh=mesh, tuning=tuning),
      learning_rate=learning_rate, weight_decay=weight_decay,
      cautious_weight_decay=cautious_weight_decay,
      adamw_learning_rate=adamw_learning_rate, adamw_b1=adamw_b1,
      adamw_b2=adamw_b2, adamw_eps=adamw_eps,
      adamw_weight_decay=adamw_weight_decay, param_labels=param_labels,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout)


def adamuon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    *,
    momentum: float = 0.95,
    beta2: float = 0.995,
    eps: float = 1e-8,
    bias_correction: bool = True,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adamw_b1: float = 0.9,
    adamw_b2: float = 0.95,
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float = 0.0,
    param_labels: _labels.ParamLabels = None,
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  """AdaMuon (:func:`scale_by_adamuon`) for hidden matrices, AdamW for the rest.

  The Muon update of each matrix is scaled by its momentum's norm against a
  running RMS of that norm (one scalar per matrix, NovoGrad-style); routing
  as in :func:`muon`.

  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum (other leaves, even ones
  batched with it, are not affected). To skip such steps wrap the optimizer
  in ``optax.apply_if_finite(..., max_consecutive_errors=k)``.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays that
  ``orbax.checkpoint`` saves and restores as it is.

  Args:
    learning_rate: Muon-chain learning rate (a float or a schedule).
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    beta2: EMA coefficient of the per-matrix squared-norm second moment, in
      ``[0, 1)``.
    eps: relative guard of the division by ``sqrt(v_hat)`` (``>= 0``; see
      :func:`scale_by_adamuon`).
    bias_correction: divide the second moment by ``1 - beta2^t`` (the seed's
      code does not: ``False`` restores it).
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: AdamW's learning rate and weight decay transfer) or
      ``"none"``.
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), scaled
      by the learning rate: ``p <- p - lr * (u + weight_decay * p)``.
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient, in ``[0, 1)``.
    adamw_b2: AdamW's second-moment coefficient, in ``[0, 1)``.
    adamw_eps: AdamW's epsilon (``>= 0``).
    adamw_weight_decay: AdamW's decoupled weight decay (``>= 0``).
    param_labels: ``None`` (use :func:`muon_labels` with this alias's
      ``batch_axes`` and ``matrix_axes``), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under
      ``optax.inject_hyperparams``).
    mu_dtype: floating dtype of the momentum buffer and of AdamW's first
      moment; ``None`` is the param's dtype promoted to at least float32.
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
      :func:`optax_muon.infer_layout` (every leaf's label and matrix axes,
      read from the model's computation), in place of ``param_labels``,
      ``batch_axes`` and ``matrix_axes``: giving any of them with it is a
      ``ValueError``.
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over, so that each device orthogonalises only its share; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``).
    tuning: speed choices (:class:`Tuning`); ``None`` is the backend's
      defaults. They change no result beyond rounding.

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optax_muon as om
    >>> params = {"hidden": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = om.adamuon(0.02)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> om.muon_labels(params)["hidden"]
    {'bias': 'adamw', 'kernel': 'muon'}
  """
  return _alias(
      functools.partial(
          _variants.scale_by_adamuon,
          momentum, beta2=beta2, eps=eps, bias_correction=bias_correction,
          nesterov=nesterov,
          ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
          shape_scale=shape_scale,
          mu_dtype=mu_dtype, ns_mesh_axis=ns_mesh_axis,
          mesh=mesh, tuning=tuning),
      learning_rate=learning_rate, weight_decay=weight_decay,
      cautious_weight_decay=cautious_weight_decay,
      adamw_learning_rate=adamw_learning_rate, adamw_b1=adamw_b1,
      adamw_b2=adamw_b2, adamw_eps=adamw_eps,
      adamw_weight_decay=adamw_weight_decay, param_labels=param_labels,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout)


def mommuon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    *,
    momentum: float = 0.95,
    ns_steps: int = 15,
    ns_every: int = 5,
    ns_beta: float = 0.5,
    ns_average: str = "gram",
    ns_damping: float = 0.0,
    ns_rescale: bool = True,
    nesterov: bool = True,
    shape_scale: str = "spectral",
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adamw_b1: float = 0.9,
    adamw_b2: float = 0.95,
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float = 0.0,
    param_labels: _labels.ParamLabels = None,
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  """MomMuon (:func:`scale_by_mommuon`) for hidden matrices, AdamW for the rest.

  Each matrix's update is its normalised momentum whitened by a running
  preconditioner ``P ~ (Ybar)^{-1/2}``, ``Ybar`` an average of the Gram
  matrices ``G G^T``, that a Newton–Schulz inverse square root refreshes
  every ``ns_every`` steps, rescaled to an orthogonal matrix's Frobenius
  norm; routing as in :func:`muon`. The inverse square root always runs in
  float32, so there is no ``ns_dtype``.

  The defaults are the best configuration measured on the examples (README
  "MomMuon"). The seed's exact form, which does not train well (lm example:
  validation loss 3.245 against Muon's 1.874), is ``ns_average=
  "preconditioner", ns_beta=0.9, ns_every=1, ns_rescale=False``.

  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum (other leaves, even ones
  batched with it, are not affected). To skip such steps wrap the optimizer
  in ``optax.apply_if_finite(..., max_consecutive_errors=k)``.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays that
  ``orbax.checkpoint`` saves and restores as it is.

  Args:
    learning_rate: Muon-chain learning rate (a float or a schedule).
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    ns_steps: steps of the coupled inverse-square-root iteration (an int
      >= 1).
    ns_every: refresh the preconditioner every this many steps (an int >= 0,
      or a traced int under ``optax.inject_hyperparams``; 0: only on the
      first step).
    ns_beta: EMA coefficient of the Gram (or preconditioner) average, in
      ``[0, 1)``.
    ns_average: ``"gram"`` or ``"preconditioner"`` (the seed); see
      :func:`scale_by_mommuon`.
    ns_damping: Tikhonov damping of the whitened Gram matrix, relative to
      its mean eigenvalue (``>= 0``).
    ns_rescale: rescale each update to an orthogonal matrix's Frobenius
      norm ``sqrt(min(fan_in, fan_out))`` (``False``: the seed).
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: AdamW's learning rate and weight decay transfer) or
      ``"none"``.
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), scaled
      by the learning rate: ``p <- p - lr * (u + weight_decay * p)``.
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient, in ``[0, 1)``.
    adamw_b2: AdamW's second-moment coefficient, in ``[0, 1)``.
    adamw_eps: AdamW's epsilon (``>= 0``).
    adamw_weight_decay: AdamW's decoupled weight decay (``>= 0``).
    param_labels: ``None`` (use :func:`muon_labels` with this alias's
      ``batch_axes`` and ``matrix_axes``), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under
      ``optax.inject_hyperparams``).
    mu_dtype: floating dtype of the momentum buffer and of AdamW's first
      moment; ``None`` is the param's dtype promoted to at least float32.
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
      :func:`optax_muon.infer_layout` (every leaf's label and matrix axes,
      read from the model's computation), in place of ``param_labels``,
      ``batch_axes`` and ``matrix_axes``: giving any of them with it is a
      ``ValueError``.
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over, so that each device orthogonalises only its share; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``).
    tuning: speed choices (:class:`Tuning`); ``None`` is the backend's
      defaults. They change no result beyond rounding.

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optax_muon as om
    >>> params = {"hidden": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = om.mommuon(0.02)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> om.muon_labels(params)["hidden"]
    {'bias': 'adamw', 'kernel': 'muon'}
  """
  return _alias(
      functools.partial(
          _variants.scale_by_mommuon,
          momentum, ns_steps=ns_steps, ns_every=ns_every, ns_beta=ns_beta,
          ns_average=ns_average, ns_damping=ns_damping,
          ns_rescale=ns_rescale, nesterov=nesterov,
          shape_scale=shape_scale,
          mu_dtype=mu_dtype, ns_mesh_axis=ns_mesh_axis,
          mesh=mesh, tuning=tuning),
      learning_rate=learning_rate, weight_decay=weight_decay,
      cautious_weight_decay=cautious_weight_decay,
      adamw_learning_rate=adamw_learning_rate, adamw_b1=adamw_b1,
      adamw_b2=adamw_b2, adamw_eps=adamw_eps,
      adamw_weight_decay=adamw_weight_decay, param_labels=param_labels,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout)


def ogsignmuon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adamw_b1: float = 0.9,
    adamw_b2: float = 0.95,
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float = 0.0,
    param_labels: _labels.ParamLabels = None,
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  """OGSignMuon (:func:`scale_by_ogsignmuon`) for hidden matrices, AdamW for the rest.

  Each matrix's update has Muon's magnitudes and the momentum's signs;
  routing as in :func:`muon`.

  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum (other leaves, even ones
  batched with it, are not affected). To skip such steps wrap the optimizer
  in ``optax.apply_if_finite(..., max_consecutive_errors=k)``.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays that
  ``orbax.checkpoint`` saves and restores as it is.

  Args:
    learning_rate: Muon-chain learning rate (a float or a schedule).
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: AdamW's learning rate and weight decay transfer) or
      ``"none"``.
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), scaled
      by the learning rate: ``p <- p - lr * (u + weight_decay * p)``.
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient, in ``[0, 1)``.
    adamw_b2: AdamW's second-moment coefficient, in ``[0, 1)``.
    adamw_eps: AdamW's epsilon (``>= 0``).
    adamw_weight_decay: AdamW's decoupled weight decay (``>= 0``).
    param_labels: ``None`` (use :func:`muon_labels` with this alias's
      ``batch_axes`` and ``matrix_axes``), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under
      ``optax.inject_hyperparams``).
    mu_dtype: floating dtype of the momentum buffer and of AdamW's first
      moment; ``None`` is the param's dtype promoted to at least float32.
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
      :func:`optax_muon.infer_layout` (every leaf's label and matrix axes,
      read from the model's computation), in place of ``param_labels``,
      ``batch_axes`` and ``matrix_axes``: giving any of them with it is a
      ``ValueError``.
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over, so that each device orthogonalises only its share; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``).
    tuning: speed choices (:class:`Tuning`); ``None`` is the backend's
      defaults. They change no result beyond rounding.

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optax_muon as om
    >>> params = {"hidden": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = om.ogsignmuon(0.02)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> om.muon_labels(params)["hidden"]
    {'bias': 'adamw', 'kernel': 'muon'}
  """
  return _alias(
      functools.partial(
          _variants.scale_by_ogsignmuon,
          momentum, nesterov=nesterov,
          ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
          shape_scale=shape_scale,
          mu_dtype=mu_dtype, ns_mesh_axis=ns_mesh_axis,
          mesh=mesh, tuning=tuning),
      learning_rate=learning_rate, weight_decay=weight_decay,
      cautious_weight_decay=cautious_weight_decay,
      adamw_learning_rate=adamw_learning_rate, adamw_b1=adamw_b1,
      adamw_b2=adamw_b2, adamw_eps=adamw_eps,
      adamw_weight_decay=adamw_weight_decay, param_labels=param_labels,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout)


def normuon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    *,
    momentum: float = 0.95,
    beta2: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adamw_b1: float = 0.9,
    adamw_b2: float = 0.95,
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float = 0.0,
    param_labels: _labels.ParamLabels = None,
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
) -> optax.GradientTransformation:
  """NorMuon (:func:`scale_by_normuon`) for hidden matrices, AdamW for the rest.

  The Muon update of each matrix is normalised per output neuron by a
  running second moment, its Frobenius norm restored; routing as in
  :func:`muon`.

  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum (other leaves, even ones
  batched with it, are not affected). To skip such steps wrap the optimizer
  in ``optax.apply_if_finite(..., max_consecutive_errors=k)``.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays that
  ``orbax.checkpoint`` saves and restores as it is.

  Args:
    learning_rate: Muon-chain learning rate (a float or a schedule).
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    beta2: EMA coefficient of the per-output-neuron second moment, in
      ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: AdamW's learning rate and weight decay transfer) or
      ``"none"``.
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), scaled
      by the learning rate: ``p <- p - lr * (u + weight_decay * p)``.
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient, in ``[0, 1)``.
    adamw_b2: AdamW's second-moment coefficient, in ``[0, 1)``.
    adamw_eps: AdamW's epsilon (``>= 0``).
    adamw_weight_decay: AdamW's decoupled weight decay (``>= 0``).
    param_labels: ``None`` (use :func:`muon_labels` with this alias's
      ``batch_axes`` and ``matrix_axes``), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under
      ``optax.inject_hyperparams``).
    mu_dtype: floating dtype of the momentum buffer and of AdamW's first
      moment; ``None`` is the param's dtype promoted to at least float32.
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
      :func:`optax_muon.infer_layout` (every leaf's label and matrix axes,
      read from the model's computation), in place of ``param_labels``,
      ``batch_axes`` and ``matrix_axes``: giving any of them with it is a
      ``ValueError``.
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over, so that each device orthogonalises only its share; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``).
    tuning: speed choices (:class:`Tuning`); ``None`` is the backend's
      defaults. They change no result beyond rounding.

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optax_muon as om
    >>> params = {"hidden": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = om.normuon(0.02)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> om.muon_labels(params)["hidden"]
    {'bias': 'adamw', 'kernel': 'muon'}
  """
  return _alias(
      functools.partial(
          _variants.scale_by_normuon,
          momentum, beta2=beta2, nesterov=nesterov,
          ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
          shape_scale=shape_scale,
          mu_dtype=mu_dtype, ns_mesh_axis=ns_mesh_axis,
          mesh=mesh, tuning=tuning),
      learning_rate=learning_rate, weight_decay=weight_decay,
      cautious_weight_decay=cautious_weight_decay,
      adamw_learning_rate=adamw_learning_rate, adamw_b1=adamw_b1,
      adamw_b2=adamw_b2, adamw_eps=adamw_eps,
      adamw_weight_decay=adamw_weight_decay, param_labels=param_labels,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout)


def muonh(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adamw_b1: float = 0.9,
    adamw_b2: float = 0.95,
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float = 0.0,
    param_labels: _labels.ParamLabels = None,
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
    zero_init_rms: float | None = None,
) -> optax.GradientTransformation:
  """MuonH: Muon's direction on each hidden matrix's sphere, AdamW for the rest.

  Hidden matrices get :func:`scale_by_muon` followed by :func:`hyperball`:
  each step moves a matrix by ``learning_rate`` times its initial Frobenius
  norm ``R`` and projects it back to the sphere of radius ``R`` (matrices
  that start at zero grow inside the ball of a radius from
  ``zero_init_rms``). Every other leaf (embeddings, output heads, biases,
  norm scales) gets ``optax.adamw`` as in :func:`muon`.

  References:
    Wen et al., "Fantastic Pretraining Optimizers and Where to Find Them II:
    From Weight Decay to Hyperball Optimization", 2025.
    https://whenwen.github.io/wd_blog/public/hyperball-part-1.html

  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum (other leaves, even ones
  batched with it, are not affected). To skip such steps wrap the optimizer
  in ``optax.apply_if_finite(..., max_consecutive_errors=k)``.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays that
  ``orbax.checkpoint`` saves and restores as it is.

  Args:
    learning_rate: the Muon chain's step size relative to each matrix's
      radius (a float or a schedule); see :func:`hyperball`. The default,
      half of Muon's, was the better of 0.01 and 0.02 for MuonH on the lm
      example (README, "Which optimizer should I use?").
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: AdamW's learning rate and weight decay transfer) or
      ``"none"``.
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), added
      to the direction before Hyperball (``u + weight_decay * p``; on the
      sphere it only tilts the step, so the default is none).
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient, in ``[0, 1)``.
    adamw_b2: AdamW's second-moment coefficient, in ``[0, 1)``.
    adamw_eps: AdamW's epsilon (``>= 0``).
    adamw_weight_decay: AdamW's decoupled weight decay (``>= 0``).
    param_labels: ``None`` (use :func:`muon_labels` with this alias's
      ``batch_axes`` and ``matrix_axes``), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under
      ``optax.inject_hyperparams``).
    mu_dtype: floating dtype of the momentum buffer and of AdamW's first
      moment; ``None`` is the param's dtype promoted to at least float32.
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
      :func:`optax_muon.infer_layout` (every leaf's label and matrix axes,
      read from the model's computation), in place of ``param_labels``,
      ``batch_axes`` and ``matrix_axes``: giving any of them with it is a
      ``ValueError``.
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over, so that each device orthogonalises only its share; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``).
    tuning: speed choices (:class:`Tuning`); ``None`` is the backend's
      defaults. They change no result beyond rounding.
    zero_init_rms: entry RMS that sets the radius of matrices that are zero
      at init (they grow inside that ball); ``None``: ``1/sqrt(fan_in)``.
      See :func:`hyperball`.

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optax_muon as om
    >>> params = {"hidden": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = om.muonh(0.02)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> om.muon_labels(params)["hidden"]
    {'bias': 'adamw', 'kernel': 'muon'}
  """
  return _alias(
      functools.partial(
          _variants.scale_by_muon,
          momentum, nesterov=nesterov,
          ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
          shape_scale=shape_scale,
          mu_dtype=mu_dtype, ns_mesh_axis=ns_mesh_axis,
          mesh=mesh, tuning=tuning),
      learning_rate=learning_rate, weight_decay=weight_decay,
      cautious_weight_decay=cautious_weight_decay,
      adamw_learning_rate=adamw_learning_rate, adamw_b1=adamw_b1,
      adamw_b2=adamw_b2, adamw_eps=adamw_eps,
      adamw_weight_decay=adamw_weight_decay, param_labels=param_labels,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout, hyperball=True, zero_init_rms=zero_init_rms)


def normuonh(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    *,
    momentum: float = 0.95,
    beta2: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: ns.NsCoeffs = "quintic",
    ns_dtype: DTypeLike | None = None,
    shape_scale: str = "spectral",
    weight_decay: float = 0.0,
    cautious_weight_decay: bool = False,
    adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adamw_b1: float = 0.9,
    adamw_b2: float = 0.95,
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float = 0.0,
    param_labels: _labels.ParamLabels = None,
    mu_dtype: DTypeLike | None = None,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    layout: _layout.Layout | None = None,
    ns_mesh_axis: _mesh.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
    tuning: _tuning.Tuning | None = None,
    zero_init_rms: float | None = None,
) -> optax.GradientTransformation:
  """NorMuon's direction on each hidden matrix's sphere, AdamW for the rest.

  Hidden matrices get :func:`scale_by_normuon` followed by
  :func:`hyperball` (a step of relative size ``learning_rate`` on the sphere
  of the matrix's initial norm); routing as in :func:`muon`.

  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum (other leaves, even ones
  batched with it, are not affected). To skip such steps wrap the optimizer
  in ``optax.apply_if_finite(..., max_consecutive_errors=k)``.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays that
  ``orbax.checkpoint`` saves and restores as it is.

  Args:
    learning_rate: the Muon chain's step size relative to each matrix's
      radius (a float or a schedule); see :func:`hyperball`. The default,
      half of Muon's, was the better of 0.01 and 0.02 for MuonH on the lm
      example (README, "Which optimizer should I use?").
    momentum: EMA coefficient ``beta`` of the momentum buffer, in ``[0, 1)``.
    beta2: EMA coefficient of the per-output-neuron second moment, in
      ``[0, 1)``.
    nesterov: use the Nesterov form ``(1 - beta) g + beta buf``.
    ns_steps: Newton–Schulz steps (an int >= 1).
    ns_coeffs: ``"quintic"``, ``"polar_express"`` or a table of
      ``(a, b, c)`` rows; see :class:`NewtonSchulz`.
    ns_dtype: compute dtype of Newton–Schulz. ``None``: float32 on CPU,
      bfloat16 inputs with float32 accumulation on GPU/TPU. ``jnp.float32``
      is float32 on every backend (``Precision.HIGHEST`` matmuls).
    shape_scale: ``"spectral"`` (``sqrt(max(1, fan_out / fan_in))``, the
      reference Muon), ``"rms"`` (``0.2 sqrt(max(fan_in, fan_out))``,
      Moonlight: AdamW's learning rate and weight decay transfer) or
      ``"none"``.
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), added
      to the direction before Hyperball (``u + weight_decay * p``; on the
      sphere it only tilts the step, so the default is none).
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient, in ``[0, 1)``.
    adamw_b2: AdamW's second-moment coefficient, in ``[0, 1)``.
    adamw_eps: AdamW's epsilon (``>= 0``).
    adamw_weight_decay: AdamW's decoupled weight decay (``>= 0``).
    param_labels: ``None`` (use :func:`muon_labels` with this alias's
      ``batch_axes`` and ``matrix_axes``), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under
      ``optax.inject_hyperparams``).
    mu_dtype: floating dtype of the momentum buffer and of AdamW's first
      moment; ``None`` is the param's dtype promoted to at least float32.
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
      :func:`optax_muon.infer_layout` (every leaf's label and matrix axes,
      read from the model's computation), in place of ``param_labels``,
      ``batch_axes`` and ``matrix_axes``: giving any of them with it is a
      ``ValueError``.
    ns_mesh_axis: a mesh axis name (or tuple of names) to split the stacked
      matrices over, so that each device orthogonalises only its share; see
      :func:`scale_by_muon`.
    mesh: the mesh for ``ns_mesh_axis``; ``None`` uses the ambient mesh
      (``jax.set_mesh``).
    tuning: speed choices (:class:`Tuning`); ``None`` is the backend's
      defaults. They change no result beyond rounding.
    zero_init_rms: entry RMS that sets the radius of matrices that are zero
      at init (they grow inside that ball); ``None``: ``1/sqrt(fan_in)``.
      See :func:`hyperball`.

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, optax_muon as om
    >>> params = {"hidden": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2))}}
    >>> tx = om.normuonh(0.02)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> om.muon_labels(params)["hidden"]
    {'bias': 'adamw', 'kernel': 'muon'}
  """
  return _alias(
      functools.partial(
          _variants.scale_by_normuon,
          momentum, beta2=beta2, nesterov=nesterov,
          ns_steps=ns_steps, ns_coeffs=ns_coeffs, ns_dtype=ns_dtype,
          shape_scale=shape_scale,
          mu_dtype=mu_dtype, ns_mesh_axis=ns_mesh_axis,
          mesh=mesh, tuning=tuning),
      learning_rate=learning_rate, weight_decay=weight_decay,
      cautious_weight_decay=cautious_weight_decay,
      adamw_learning_rate=adamw_learning_rate, adamw_b1=adamw_b1,
      adamw_b2=adamw_b2, adamw_eps=adamw_eps,
      adamw_weight_decay=adamw_weight_decay, param_labels=param_labels,
      mu_dtype=mu_dtype, batch_axes=batch_axes, matrix_axes=matrix_axes,
      layout=layout, hyperball=True, zero_init_rms=zero_init_rms)



#: Every Muon-family alias by name, read-only: Muon, its variants, then the
#: Hyperball forms. :func:`describe`, the tests, the examples and the API
#: reference read this mapping, so a new alias is one entry here.
ALIASES: Mapping[str, Callable[..., optax.GradientTransformation]] = (
    types.MappingProxyType({alias.__name__: alias for alias in (
        muon, adamuon, mommuon, ogsignmuon, normuon, muonh, normuonh)}))
