"""Ready optimizers: a Muon-family chain for hidden matrices, AdamW for the rest.

Each alias is::

  optax.multi_transform(
      {"muon": chain(scale_by_<variant>, decayed_weights, scale_by_lr),
       "adamw": optax.adamw(...)},
      labels)

AdamW runs on params and gradients promoted to at least float32
(:func:`in_float32`): for bfloat16 and float16 params its moments are float32
(its first moment in ``mu_dtype`` when that is given), like Muon's momentum,
and its updates come back in the gradients' dtype.

Use with ``optax.inject_hyperparams`` by naming the static arguments:
``optax.inject_hyperparams(om.muon, static_args=om.static_args(om.muon))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from optax_muon import _labels, _matrix, _skeleton, _variants, _weight_decay
from optax_muon import _newton_schulz as ns

_STATIC = ("ns_steps", "ns_every", "ns_dtype", "mu_dtype", "param_labels",
           "batch_axes", "mesh")


def static_args(alias) -> tuple[str, ...]:
  """The arguments of ``alias`` that ``optax.inject_hyperparams`` must not
  turn into arrays or schedules: the step counts (``ns_steps``,
  ``ns_every``: Python ints that shape the computation), dtypes (classes
  look like callables), ``param_labels`` / ``batch_axes`` (functions) and
  ``mesh`` (a ``Mesh`` is callable, as a context decorator).

  Example: ``optax.inject_hyperparams(om.mommuon,
  static_args=om.static_args(om.mommuon))(learning_rate=0.02)``.

  With bfloat16 or float16 params also pass
  ``hyperparam_dtype=jnp.float32``: by default ``inject_hyperparams`` stores
  every hyperparameter in the params' dtype, which turns ``momentum=0.95``
  into 0.9492 and ``beta2=0.995`` into 0.9961 in bfloat16.
  """
  import inspect
  params = inspect.signature(alias).parameters
  return tuple(name for name in _STATIC if name in params)


_ALIAS_ARGS_DOC = """learning_rate: Muon-chain learning rate (a float or a schedule).
    weight_decay: decoupled weight decay of the Muon chain, scaled by the
      learning rate: ``p <- p - lr * (u + weight_decay * p)``.
    cautious_weight_decay: decay only entries where the update and the
      parameter agree in sign (see :func:`add_cautious_decayed_weights`).
    adamw_learning_rate: AdamW's learning rate (a float or a schedule).
    adamw_b1: AdamW's first-moment coefficient.
    adamw_b2: AdamW's second-moment coefficient.
    adamw_eps: AdamW's epsilon.
    adamw_weight_decay: AdamW's decoupled weight decay.
    param_labels: ``None`` (use :func:`muon_labels`), a tree of ``"muon"`` /
      ``"adamw"`` labels like the params, or a function of the params that
      returns one (name it in ``static_args`` under inject_hyperparams)."""


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


def _alias(scale: optax.GradientTransformation, learning_rate, weight_decay,
           cautious_weight_decay, adamw_learning_rate, adamw_b1, adamw_b2,
           adamw_eps, adamw_weight_decay, param_labels, mu_dtype=None):
  muon_chain = optax.chain(
      scale,
      _weight_decay.decayed_weights(weight_decay, cautious_weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  adamw = in_float32(optax.adamw(
      adamw_learning_rate, b1=adamw_b1, b2=adamw_b2, eps=adamw_eps,
      weight_decay=adamw_weight_decay, mu_dtype=mu_dtype))
  return optax.multi_transform(
      {_labels.MUON: muon_chain, _labels.ADAMW: adamw},
      _labels.resolve_labels(param_labels))


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
    ns_mesh_axis: _skeleton.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
) -> optax.GradientTransformation:
  """Muon for hidden matrices, AdamW for everything else.

  Hidden matrices (as labelled by ``param_labels``, by default
  :func:`muon_labels`: leaves with 2+ dims that are not embeddings or output
  heads) get :func:`scale_by_muon`, decoupled weight decay and the learning
  rate; every other leaf gets ``optax.adamw``. The Muon step equals
  Keller Jordan's PyTorch ``Muon`` (``muon_update``) in the Flax layout.

  References:
    Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks", 2024. https://kellerjordan.github.io/posts/muon/

  Args:
    {alias}
    {common}

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).
  """
  return _alias(
      _variants.scale_by_muon(
          momentum, nesterov=nesterov, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
          ns_dtype=ns_dtype, shape_scale=shape_scale, mu_dtype=mu_dtype,
          batch_axes=batch_axes, ns_mesh_axis=ns_mesh_axis, mesh=mesh),
      learning_rate, weight_decay, cautious_weight_decay, adamw_learning_rate,
      adamw_b1, adamw_b2, adamw_eps, adamw_weight_decay, param_labels,
      mu_dtype)


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
    ns_mesh_axis: _skeleton.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
) -> optax.GradientTransformation:
  """AdaMuon (:func:`scale_by_adamuon`) for hidden matrices, AdamW for the rest.

  Args:
    {alias}
    beta2: EMA coefficient of the per-matrix squared-norm second moment.
    eps: relative guard of the division by ``sqrt(v_hat)`` (see
      :func:`scale_by_adamuon`).
    bias_correction: divide the second moment by ``1 - beta2^t`` (the seed's
      code does not: ``False`` restores it).
    {common}

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).
  """
  return _alias(
      _variants.scale_by_adamuon(
          momentum, beta2=beta2, eps=eps, bias_correction=bias_correction,
          nesterov=nesterov, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
          ns_dtype=ns_dtype, shape_scale=shape_scale, mu_dtype=mu_dtype,
          batch_axes=batch_axes, ns_mesh_axis=ns_mesh_axis, mesh=mesh),
      learning_rate, weight_decay, cautious_weight_decay, adamw_learning_rate,
      adamw_b1, adamw_b2, adamw_eps, adamw_weight_decay, param_labels,
      mu_dtype)


def mommuon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    *,
    momentum: float = 0.95,
    ns_steps: int = 15,
    ns_every: int = 1,
    ns_beta: float = 0.9,
    ns_average: str = "preconditioner",
    ns_damping: float = 0.0,
    nesterov: bool = True,
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
    ns_mesh_axis: _skeleton.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
) -> optax.GradientTransformation:
  """MomMuon (:func:`scale_by_mommuon`) for hidden matrices, AdamW for the rest.

  ``ns_coeffs`` is accepted for a common signature with the other aliases;
  MomMuon's inverse square root has no coefficient table, so it is unused.

  Args:
    {alias}
    ns_every: refresh the preconditioner every this many steps.
    ns_beta: EMA coefficient of the preconditioner (or Gram) average.
    ns_average: ``"preconditioner"`` (the seed) or ``"gram"``; see
      :func:`scale_by_mommuon`.
    ns_damping: Tikhonov damping of the whitened Gram matrix, relative to
      its mean eigenvalue.
    {common}

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).
  """
  del ns_coeffs
  return _alias(
      _variants.scale_by_mommuon(
          momentum, ns_steps=ns_steps, ns_every=ns_every, ns_beta=ns_beta,
          ns_average=ns_average, ns_damping=ns_damping, nesterov=nesterov,
          ns_dtype=ns_dtype, shape_scale=shape_scale,
          mu_dtype=mu_dtype, batch_axes=batch_axes,
          ns_mesh_axis=ns_mesh_axis, mesh=mesh),
      learning_rate, weight_decay, cautious_weight_decay, adamw_learning_rate,
      adamw_b1, adamw_b2, adamw_eps, adamw_weight_decay, param_labels,
      mu_dtype)


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
    ns_mesh_axis: _skeleton.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
) -> optax.GradientTransformation:
  """OGSignMuon (:func:`scale_by_ogsignmuon`) for hidden matrices, AdamW for
  the rest.

  Args:
    {alias}
    {common}

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).
  """
  return _alias(
      _variants.scale_by_ogsignmuon(
          momentum, nesterov=nesterov, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
          ns_dtype=ns_dtype, shape_scale=shape_scale, mu_dtype=mu_dtype,
          batch_axes=batch_axes, ns_mesh_axis=ns_mesh_axis, mesh=mesh),
      learning_rate, weight_decay, cautious_weight_decay, adamw_learning_rate,
      adamw_b1, adamw_b2, adamw_eps, adamw_weight_decay, param_labels,
      mu_dtype)


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
    ns_mesh_axis: _skeleton.MeshAxis = None,
    mesh: jax.sharding.Mesh | None = None,
) -> optax.GradientTransformation:
  """NorMuon (:func:`scale_by_normuon`) for hidden matrices, AdamW for the rest.

  Args:
    {alias}
    beta2: EMA coefficient of the per-output-neuron second moment.
    {common}

  Returns:
    An ``optax.GradientTransformation`` (a ``multi_transform``).
  """
  return _alias(
      _variants.scale_by_normuon(
          momentum, beta2=beta2, nesterov=nesterov, ns_steps=ns_steps,
          ns_coeffs=ns_coeffs, ns_dtype=ns_dtype, shape_scale=shape_scale,
          mu_dtype=mu_dtype, batch_axes=batch_axes,
          ns_mesh_axis=ns_mesh_axis, mesh=mesh),
      learning_rate, weight_decay, cautious_weight_decay, adamw_learning_rate,
      adamw_b1, adamw_b2, adamw_eps, adamw_weight_decay, param_labels,
      mu_dtype)


_ROBUSTNESS_DOC = """\
  Non-finite gradients: a NaN or inf in a Muon leaf's gradient makes that
  leaf's update NaN and stays in its momentum, so every later update of the
  leaf is NaN too (other leaves, even ones batched with it, are not
  affected). To skip such steps wrap the optimizer:
  ``optax.apply_if_finite(om.muon(...), max_consecutive_errors=k)`` leaves
  the whole state untouched on a step whose gradients are not all finite, so
  the next finite step is exactly that of a run that never saw it.

  Dtypes and checkpoints: updates come in the gradients' dtype. For
  bfloat16 and float16 params the momentum (and AdamW's moments) is float32
  unless ``mu_dtype`` is given. The state's dtypes and shapes never change,
  so a jitted update compiles once, and the state is a pytree of arrays:
  ``orbax.checkpoint.StandardCheckpointer`` saves and restores it as it is
  (restore against ``jax.eval_shape`` of ``init``).

"""


def _fill_docs():
  for fn in (muon, adamuon, mommuon, ogsignmuon, normuon):
    fn.__doc__ = fn.__doc__.replace("{alias}", _ALIAS_ARGS_DOC).replace(
        "{common}", _variants._COMMON_ARGS_DOC).replace(
            "  Args:\n", _ROBUSTNESS_DOC + "  Args:\n", 1)


_fill_docs()
