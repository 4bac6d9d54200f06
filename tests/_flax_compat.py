"""What the tests need from Flax, on every declared Flax version."""

import jax
from flax import nnx


def pure(tree):
  """The tree with each ``nnx.Variable`` replaced by its value:
  ``nnx.as_pure`` where Flax has it (0.12.7 on), else the same by hand (the
  floor, flax 0.12.0)."""
  if hasattr(nnx, "as_pure"):
    return nnx.as_pure(tree)
  return jax.tree.map(
      lambda x: x.value if isinstance(x, nnx.Variable) else x, tree,
      is_leaf=lambda x: isinstance(x, nnx.Variable))
