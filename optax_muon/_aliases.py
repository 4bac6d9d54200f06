"""Ready optimizers: a Muon-family chain for hidden matrices, AdamW for the rest.

Each alias is::

  optax.multi_transform(
      {"muon": chain(scale_by_<variant>, decayed_weights, scale_by_lr),
       "adamw": in_float32(optax.adamw(...))},
      labels)

built by one call, ``_alias(scale_by_<variant>, locals())``: an alias is its
explicit signature, its docstring (:func:`muon`'s documents every shared
argument) and that call. :data:`ALIASES` lists them by name.

AdamW runs on params and gradients promoted to at least float32
(:func:`in_float32`): for bfloat16 and float16 params its moments are float32
(its first moment in ``mu_dtype`` when that is given), like Muon's momentum,
and its updates come back in the gradients' dtype.

Use with ``optax.inject_hyperparams`` by naming the static arguments:
``optax.inject_hyperparams(om.muon, static_args=om.static_args(om.muon))``."""

from __future__ import annotations

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

_STATIC = ("ns_steps", "whiten_steps", "ns_dtype", "mu_dtype",
           "param_labels", "batch_axes", "matrix_axes", "mesh", "tuning")


def static_args(alias) -> tuple[str, ...]:
  """The arguments of ``alias`` that ``optax.inject_hyperparams`` must not
  turn into arrays or schedules.

  They are the step counts ``ns_steps`` and MomMuon's ``whiten_steps``
  (Python ints that shape the computation; MomMuon's ``ns_every`` may be
  injected), dtypes (classes look like callables), ``param_labels`` /
  ``batch_axes`` / ``matrix_axes`` (functions or trees), ``mesh`` (a
  ``Mesh`` is callable, as a context decorator) and ``tuning``.

  With bfloat16 or float16 params also pass ``hyperparam_dtype=jnp.float32``
  (:doc:`/guide/inject_hyperparams`).

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


# The arguments :func:`_alias` itself uses (the Muon chain after the
# direction, AdamW, the routing); an alias's other arguments are its
# ``scale_by_*``'s.
_ALIAS_ARGS = frozenset({
    "learning_rate", "weight_decay", "cautious_weight_decay",
    "adamw_learning_rate", "adamw_b1", "adamw_b2", "adamw_eps",
    "adamw_weight_decay", "param_labels", "batch_axes", "matrix_axes",
    "layout", "zero_init_rms"})


def _alias(scale_by, args, *, hyperball=False):
  """The ``multi_transform`` every alias returns, arguments checked.

  ``args`` are the alias's arguments by name (its ``locals()``). Those of
  :data:`_ALIAS_ARGS` build the chain, AdamW and the routing; every other
  one goes to ``scale_by`` (the variant's ``scale_by_*``), which also gets
  ``batch_axes`` and ``matrix_axes`` or ``layout``, and ``mu_dtype`` is
  AdamW's first-moment dtype too. With ``hyperball`` the Muon chain ends in
  :func:`hyperball` (a step of relative size ``learning_rate`` on each
  matrix's sphere, seeing the same matrices) instead of
  ``scale_by_learning_rate``.
  """
  direction = {k: v for k, v in args.items() if k not in _ALIAS_ARGS}
  unknown = sorted(set(direction) - set(inspect.signature(scale_by).parameters))
  if unknown:
    raise TypeError(f"{scale_by.__name__} takes no {unknown}: an alias "
                    "passes it only its own arguments.")
  who = ("om." + scale_by.__name__.removeprefix("scale_by_")
         + ("h" if hyperball else ""))
  param_labels, batch_axes = args["param_labels"], args["batch_axes"]
  matrix_axes, layout = args["matrix_axes"], args["layout"]
  _layout.check_exclusive(layout, who, param_labels=param_labels,
                          batch_axes=batch_axes, matrix_axes=matrix_axes)
  _checks.in_range(args["weight_decay"], "weight_decay", 0.0)
  _checks.boolean(args["cautious_weight_decay"], "cautious_weight_decay")
  _checks.in_range(args["adamw_b1"], "adamw_b1", 0.0, 1.0, high_open=True)
  _checks.in_range(args["adamw_b2"], "adamw_b2", 0.0, 1.0, high_open=True)
  _checks.in_range(args["adamw_eps"], "adamw_eps", 0.0)
  _checks.in_range(args["adamw_weight_decay"], "adamw_weight_decay", 0.0)
  if layout is not None:
    scale = scale_by(**direction, layout=layout)
    param_labels, matrix_axes = layout.labels, layout.spec
  else:
    scale = scale_by(**direction, batch_axes=batch_axes,
                     matrix_axes=matrix_axes)
  muon_chain = optax.chain(
      scale,
      _weight_decay.decayed_weights(args["weight_decay"],
                                    args["cautious_weight_decay"]),
      _hyperball.hyperball(
          args["learning_rate"], zero_init_rms=args["zero_init_rms"],
          batch_axes=batch_axes, matrix_axes=matrix_axes) if hyperball
      else optax.scale_by_learning_rate(args["learning_rate"]),
  )
  adamw = in_float32(optax.adamw(
      args["adamw_learning_rate"], b1=args["adamw_b1"], b2=args["adamw_b2"],
      eps=args["adamw_eps"], weight_decay=args["adamw_weight_decay"],
      mu_dtype=args["mu_dtype"]))
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

  Every alias of :data:`ALIASES` is built this way and takes the arguments
  below with the meaning given here, unless its own docstring says
  otherwise.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks", 2024. https://kellerjordan.github.io/posts/muon/

  A NaN or inf in a Muon leaf's gradient makes only that leaf's update NaN;
  ``optax.apply_if_finite`` skips such steps (:doc:`/guide/errors`).
  Updates come in the gradients' dtype, and for bfloat16 and float16 params
  the state is float32 unless ``mu_dtype`` is given
  (:doc:`/guide/precision`); the state's dtypes and shapes never change, so
  ``orbax.checkpoint`` saves it as it is (:doc:`/guide/checkpointing`).
  Under ``optax.inject_hyperparams`` name :func:`static_args`
  (:doc:`/guide/inject_hyperparams`).

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
  return _alias(_variants.scale_by_muon, locals())


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
  running RMS of that norm (one scalar per matrix, NovoGrad-style). The
  routing, the chain and every argument not listed here are as in
  :func:`muon`.

  Args:
    beta2: EMA coefficient of the per-matrix squared-norm second moment, in
      ``[0, 1)``.
    eps: relative guard of the division by ``sqrt(v_hat)`` (``>= 0``; see
      :func:`scale_by_adamuon`).
    bias_correction: divide the second moment by ``1 - beta2^t`` (the seed's
      code does not: ``False`` restores it).

  Example:
    >>> import jax.numpy as jnp, optax_muon as om
    >>> tx = om.adamuon(0.02, beta2=0.99)
    >>> state = tx.init({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  """
  return _alias(_variants.scale_by_adamuon, locals())


def mommuon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    *,
    momentum: float = 0.95,
    whiten_steps: int = 15,
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
    ns_steps: int | None = None,
) -> optax.GradientTransformation:
  """MomMuon (:func:`scale_by_mommuon`) for hidden matrices, AdamW for the rest.

  Each matrix's update is its normalised momentum whitened by a running
  preconditioner ``P ~ (Ybar)^{-1/2}``, ``Ybar`` an average of the Gram
  matrices ``G G^T``, that a Newton–Schulz inverse square root refreshes
  every ``ns_every`` steps, rescaled to an orthogonal matrix's Frobenius
  norm. The inverse square root always runs in float32, so there is no
  ``ns_dtype`` (nor ``ns_coeffs``). The routing, the chain and every
  argument not listed here are as in :func:`muon`.

  The defaults are the best configuration measured on the examples
  (:doc:`/results`). The seed's exact form, which does not train well, is
  ``ns_average="preconditioner", ns_beta=0.9, ns_every=1,
  ns_rescale=False``.

  Args:
    whiten_steps: steps of the coupled Newton–Schulz inverse-square-root
      iteration that computes the preconditioner (an int >= 1).
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
    ns_steps: deprecated synonym of ``whiten_steps`` (it counts the same
      inverse-square-root iterations, not orthogonalisation steps): giving
      it warns (``DeprecationWarning``) and sets ``whiten_steps``; giving
      it with a ``whiten_steps`` other than 15 is a ``ValueError``.

  Example:
    >>> import jax.numpy as jnp, optax_muon as om
    >>> tx = om.mommuon(0.02, whiten_steps=10, ns_every=2)
    >>> state = tx.init({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  """
  args = locals()
  # Resolved here, so that the deprecation warning points at the caller.
  args["whiten_steps"] = _variants._whiten_steps(
      whiten_steps, args.pop("ns_steps"))
  return _alias(_variants.scale_by_mommuon, args)


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

  Each matrix's update has Muon's magnitudes and the momentum's signs. It
  takes exactly :func:`muon`'s arguments, with the same meaning.

  Example:
    >>> import jax.numpy as jnp, optax_muon as om
    >>> tx = om.ogsignmuon(0.02, nesterov=False)
    >>> state = tx.init({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  """
  return _alias(_variants.scale_by_ogsignmuon, locals())


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
  running second moment, its Frobenius norm restored. The routing, the
  chain and every argument not listed here are as in :func:`muon`.

  Args:
    beta2: EMA coefficient of the per-output-neuron second moment, in
      ``[0, 1)``.

  Example:
    >>> import jax.numpy as jnp, optax_muon as om
    >>> tx = om.normuon(0.02, beta2=0.9)
    >>> state = tx.init({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  """
  return _alias(_variants.scale_by_normuon, locals())


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
  ``zero_init_rms``). The routing and every argument not listed here are
  as in :func:`muon`.

  References:
    Wen et al., "Fantastic Pretraining Optimizers and Where to Find Them II:
    From Weight Decay to Hyperball Optimization", 2025.
    https://whenwen.github.io/wd_blog/public/hyperball-part-1.html

  Args:
    learning_rate: the Muon chain's step size relative to each matrix's
      radius (a float or a schedule); see :func:`hyperball`. The default,
      half of Muon's, was the better of 0.01 and 0.02 for MuonH on the lm
      example (:doc:`/results`).
    weight_decay: decoupled weight decay of the Muon chain (``>= 0``), added
      to the direction before Hyperball (``u + weight_decay * p``; on the
      sphere it only tilts the step, so the default is none).
    zero_init_rms: entry RMS that sets the radius of matrices that are zero
      at init (they grow inside that ball); ``None``: ``1/sqrt(fan_in)``.
      See :func:`hyperball`.

  Example:
    >>> import jax.numpy as jnp, optax_muon as om
    >>> tx = om.muonh(0.01, zero_init_rms=0.02)
    >>> state = tx.init({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  """
  return _alias(_variants.scale_by_muon, locals(), hyperball=True)


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
  :func:`hyperball`, as in :func:`muonh` (whose ``learning_rate``,
  ``weight_decay`` and ``zero_init_rms`` it shares); the routing and every
  other argument are as in :func:`muon`.

  Args:
    learning_rate: the Muon chain's step size relative to each matrix's
      radius (a float or a schedule), as for :func:`muonh`.
    beta2: EMA coefficient of the per-output-neuron second moment, in
      ``[0, 1)``.
    weight_decay: added to the direction before Hyperball, as for
      :func:`muonh`.
    zero_init_rms: radius of matrices that are zero at init, as for
      :func:`muonh`.

  Example:
    >>> import jax.numpy as jnp, optax_muon as om
    >>> tx = om.normuonh(0.01, beta2=0.9)
    >>> state = tx.init({"w": jnp.ones((8, 4)), "b": jnp.zeros(4)})
  """
  return _alias(_variants.scale_by_normuon, locals(), hyperball=True)


#: Every Muon-family alias by name, read-only: Muon, its variants, then the
#: Hyperball forms. :func:`describe`, the tests, the examples and the API
#: reference read this mapping, so a new alias is one entry here.
ALIASES: Mapping[str, Callable[..., optax.GradientTransformation]] = (
    types.MappingProxyType({alias.__name__: alias for alias in (
        muon, adamuon, mommuon, ogsignmuon, normuon, muonh, normuonh)}))
