"""Decoupled weight decay, plain or cautious."""

from __future__ import annotations

import jax
import optax


def add_cautious_decayed_weights(
    weight_decay: float | jax.Array = 0.0,
) -> optax.GradientTransformation:
  r"""Adds ``weight_decay * p`` only where the update and ``p`` agree in sign.

  ``u <- u + weight_decay * [u * p > 0] * p``; followed by
  ``scale_by_learning_rate`` this is
  ``p <- p - lr * (u + wd * [u * p > 0] * p)``: entries the update is already
  shrinking are decayed, entries it is growing are left alone.

  References:
    Chen et al., "Cautious Weight Decay", 2025; used by the modded-nanogpt
    speedrun record of 2025-11-10.
    https://github.com/KellerJordan/modded-nanogpt

  Args:
    weight_decay: decay coefficient (a scalar or an array).

  Returns:
    A stateless ``GradientTransformation`` that needs ``params``.
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "cautious weight decay needs the params: call "
          "update(updates, state, params).")

    def decay(u, p):
      mask = (u * p > 0).astype(u.dtype)
      return (u + weight_decay * mask * p).astype(u.dtype)

    return jax.tree.map(decay, updates, params), state

  return optax.GradientTransformation(
      lambda params: optax.EmptyState(), update_fn)


def decayed_weights(weight_decay, cautious: bool) -> optax.GradientTransformation:
  """``add_decayed_weights`` or its cautious form; identity for a literal 0."""
  if cautious:
    return add_cautious_decayed_weights(weight_decay)
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:
    return optax.identity()
  return optax.add_decayed_weights(weight_decay)

