"""Early, clear errors for hyperparameters: one checker per kind of value.

Every checker raises ``ValueError`` naming the argument, its value and the
accepted range. Values that are only known while tracing (``jax`` tracers,
e.g. under ``optax.inject_hyperparams``) and schedules (callables) are not
range-checked: they are accepted as they are.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike


def static_int(value, name: str, low: int = 0) -> int:
  """``value`` as a Python int ``>= low``.

  Raises:
    ValueError: naming ``name``, for a float (``2.5`` is not silently
      truncated), a bool, a value below ``low``, or a traced value (with the
      ``static_args`` hint for ``optax.inject_hyperparams``).
  """
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    out = int(value)
  elif isinstance(value, (float, bool, np.floating, str)) or value is None:
    raise ValueError(f"{name} must be an int, got {value!r}.")
  else:
    try:
      arr = np.asarray(value)
      if arr.ndim or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an int, got {value!r}.")
      out = int(arr.item())
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
      raise ValueError(
          f"{name} must be a Python int known at trace time, got {value!r}. "
          "Under optax.inject_hyperparams pass "
          f"static_args=om.static_args(alias) (it names {name!r}).") from e
  if out < low:
    raise ValueError(f"{name} must be >= {low}, got {out}.")
  return out


def traceable_int(value, name: str, low: int = 0):
  """``value`` as a Python int ``>= low`` (see :func:`static_int`), or a
  traced integer scalar as it is (``optax.inject_hyperparams`` turns an int
  hyperparameter into one; its range cannot be checked while tracing).

  Raises:
    ValueError: naming ``name``, for a concrete value :func:`static_int`
      rejects, or a traced value that is not an integer scalar.
  """
  if isinstance(value, jax.core.Tracer):
    if value.ndim or not jnp.issubdtype(value.dtype, jnp.integer):
      raise ValueError(
          f"{name} must be an integer scalar, got a traced {value.dtype} "
          f"array of shape {value.shape}.")
    return value
  return static_int(value, name, low=low)


def floating_dtype(dtype: DTypeLike | None, name: str) -> jnp.dtype | None:
  """``dtype`` as a ``jnp.dtype`` (``None`` stays ``None``).

  Raises:
    ValueError: naming ``name``, unless it is a floating-point dtype.
  """
  if dtype is None:
    return None
  try:
    out = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"{name} must be a floating dtype, got {dtype!r}.") from e
  if not jnp.issubdtype(out, jnp.floating):
    raise ValueError(
        f"{name} must be a floating dtype (e.g. jnp.float32, jnp.bfloat16), "
        f"got {out}.")
  return out


def _known_scalar(value) -> float | None:
  """``value`` as a float when it is a concrete scalar, else ``None``
  (tracers, schedules and arrays with more than one entry)."""
  if callable(value):
    return None
  try:
    arr = np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError):
    return None
  if arr.size != 1 or arr.dtype.kind not in "biuf":
    raise ValueError(f"expected a number, got {value!r}.")
  return float(arr.reshape(()))


def in_range(value, name: str, low: float = -math.inf, high: float = math.inf,
             *, high_open: bool = False):
  """Checks ``low <= value <= high`` (``< high`` with ``high_open``).

  Returns ``value`` unchanged. Tracers and schedules pass unchecked.

  Raises:
    ValueError: naming ``name``, its value and the range.
  """
  try:
    v = _known_scalar(value)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None
  if v is None:
    return value
  ok = low <= v and (v < high if high_open else v <= high)
  if not ok or math.isnan(v):
    right = ")" if high_open else "]"
    raise ValueError(
        f"{name} must be in [{low}, {high}{right}, got {value!r}.")
  return value


def boolean(value, name: str) -> bool:
  """``value`` if it is a Python bool; else ``ValueError`` naming ``name``."""
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be a bool, got {value!r}.")
  return value
