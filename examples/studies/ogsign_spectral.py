"""OGSignMuon with Muon's spectral norm restored after the sign swap (the
study of issue 14; not part of the library, since it did not win).

::

  O = orthogonalize(M);   U = |O| * sign(M);   u = U * ||O||_2 / ||U||_2 * s

``||.||_2`` by power iteration. Importing this module registers it in
``examples/optimizers.py`` as ``ogsignmuon_spectral`` (README "OGSignMuon:
why it trails"); ``compare.py`` imports it through
:func:`examples.studies.load`, e.g.::

  python examples/compare.py --task lm --optimizers ogsignmuon_spectral \\
      --lr ogsignmuon_spectral=0.04
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

import optax_muon as om
from examples import optimizers
from optax_muon import _newton_schulz, _skeleton


def spectral_norm(x: jax.Array, iters: int = 16) -> jax.Array:
  """Largest singular value of each ``(..., m, n)`` matrix, shape
  ``(..., 1, 1)``: ``iters`` power iterations on ``X^T X`` from a fixed
  start."""
  x = x.astype(jnp.float32)
  v = jax.random.normal(jax.random.key(0), x.shape[:-2] + (x.shape[-1], 1))
  for _ in range(iters):
    v = jnp.swapaxes(x, -1, -2) @ (x @ v)
    v = v / (jnp.linalg.norm(v, axis=(-2, -1), keepdims=True) + 1e-30)
  return jnp.linalg.norm(x @ v, axis=(-2, -1), keepdims=True)


@dataclasses.dataclass(frozen=True)
class SpectralOGSign(_skeleton.Direction):
  """``|O| sign(M)`` rescaled to ``O``'s spectral norm."""

  orthogonalize: _newton_schulz.NewtonSchulz
  name = "ogsignmuon_spectral"

  def __call__(self, m, states, count, transposed):
    del count, transposed
    o = self.orthogonalize(m)
    u = jnp.abs(o) * jnp.sign(m)
    su = spectral_norm(u)
    return u * (spectral_norm(o) / jnp.where(su > 0, su, jnp.ones_like(su))
                ), states


def ogsignmuon_spectral(
    learning_rate: optax.ScalarOrSchedule = 0.04, *, momentum: float = 0.95,
    ns_steps: int = 5, adamw_learning_rate: optax.ScalarOrSchedule = 3e-4,
) -> optax.GradientTransformation:
  """Hidden matrices: :class:`SpectralOGSign` (Nesterov momentum, spectral
  shape scale); the rest: AdamW with the aliases' defaults."""
  direction = SpectralOGSign(_newton_schulz.NewtonSchulz(steps=ns_steps))
  muon_chain = optax.chain(
      _skeleton.scale_by_muon_family(direction, momentum=momentum),
      optax.scale_by_learning_rate(learning_rate))
  adamw = om.in_float32(optax.adamw(adamw_learning_rate, b1=0.9, b2=0.95,
                                    eps=1e-8, weight_decay=0.0))
  return optax.multi_transform({"muon": muon_chain, "adamw": adamw},
                               om.muon_labels)


optimizers.register("ogsignmuon_spectral", ogsignmuon_spectral)
