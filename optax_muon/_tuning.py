"""Speed choices, and the one place where their backend defaults are resolved.

Nothing here changes what an optimizer computes beyond floating-point
rounding: every choice picks one of several equivalent ways to run the same
Newton–Schulz iteration. Benchmarks compare the choices by passing a
:class:`Tuning` (``benchmarks/README.md`` has the figures behind the
defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

NsForm = Literal["auto", "standard", "gram"]
FORMS: tuple[str, ...] = ("auto", "standard", "gram")


def _check_int(name: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"Tuning.{name} must be an int >= {low}, got {value!r}.")
  return value


@dataclasses.dataclass(frozen=True)
class Tuning:
  """How Newton–Schulz runs; ``None`` fields take the backend's default.

  Attributes:
    form: ``"standard"`` iterates on the ``m x n`` matrix; ``"gram"`` on its
      ``m x m`` Gram matrix (same polynomial, fewer flops for ``n`` well above
      ``m``); ``"auto"`` picks the Gram form when it has fewer than 0.9x the
      flops, the arithmetic really is float32 (the Gram form squares the
      condition number) and there are at most ``gram_max_steps`` steps, or
      -- in bfloat16 or float16, with restarts -- where ``gram_in_half``
      allows it.
    gram_max_steps: most steps ``"auto"`` runs in the Gram form: its rounding
      errors grow with the steps (within 3e-3 of the standard form up to 6
      steps on an ill-conditioned 384x1536 float32 matrix, singular values up
      to 3 at 8; ``benchmarks/orthogonality.py``).
    gram_in_half: whether ``"auto"`` may pick the Gram form for a bfloat16
      or float16 compute dtype, where it restarts after the steps of
      ``gram_restarts`` (Dao AI Lab's stabilised Gram Newton–Schulz).
      ``None``: on GPU and TPU (where half precision is the default compute
      dtype and the matmuls are the cost), not on CPU.
    gram_restarts: steps after which the Gram form restarts (``X = Q X``,
      fresh ``A = X X^T``, ``Q = I``). ``None``: for bfloat16 and float16
      compute, segments of at most 3 steps with the last of at most 2 (after
      step 3 of 5; Dao AI Lab restart after step 2 in float16, which in
      bfloat16 loses more on rank-deficient input), never for float32.
    gram_max_flops_ratio: ``"auto"`` picks the Gram form when its flop
      count (restarts included) is below this fraction of the standard
      form's.
    symmetric_blocks: the symmetric ``m x m`` products (``X X^T`` and
      ``A A``) are computed as this many row blocks of their upper triangle,
      the rest mirrored (``(k + 1) / (2 k)`` of the flops). ``None``: 4 on CPU
      for ``m >= symmetric_min_size``, else 1 (accelerators prefer one large
      matmul).
    symmetric_min_size: smallest ``m`` for which ``symmetric_blocks=None``
      uses blocks.
    loop_stacks: run a stack of same-shape matrices one matrix at a time
      (``jax.lax.map``) instead of as one batched call. ``None``: on CPU,
      where a loop keeps one matrix's intermediates in cache; accelerators
      want the batch.
    loop_min_entries: stacks of matrices with fewer entries than this run
      batched even when ``loop_stacks`` holds (a loop's overhead would
      dominate).
  """

  form: NsForm = "auto"
  gram_max_steps: int = 6
  gram_in_half: bool | None = None
  gram_restarts: tuple[int, ...] | None = None
  gram_max_flops_ratio: float = 0.9
  symmetric_blocks: int | None = None
  symmetric_min_size: int = 256
  loop_stacks: bool | None = None
  loop_min_entries: int = 128 * 128

  def __post_init__(self):
    if self.form not in FORMS:
      raise ValueError(
          f"Tuning.form must be one of {FORMS}, got {self.form!r}.")
    _check_int("gram_max_steps", self.gram_max_steps, 0)
    if self.gram_in_half is not None and not isinstance(
        self.gram_in_half, bool):
      raise ValueError(
          f"Tuning.gram_in_half must be None or a bool, got "
          f"{self.gram_in_half!r}.")
    if self.gram_restarts is not None:
      try:
        restarts = tuple(self.gram_restarts)
      except TypeError:
        restarts = None
      if restarts is None or not all(
          isinstance(r, int) and not isinstance(r, bool) and r >= 1
          for r in restarts):
        raise ValueError(
            f"Tuning.gram_restarts must be None or a tuple of step numbers "
            f">= 1, got {self.gram_restarts!r}.")
      object.__setattr__(self, "gram_restarts", restarts)
    if not (isinstance(self.gram_max_flops_ratio, (int, float))
            and self.gram_max_flops_ratio > 0):
      raise ValueError(
          f"Tuning.gram_max_flops_ratio must be a number > 0, got "
          f"{self.gram_max_flops_ratio!r}.")
    if self.symmetric_blocks is not None:
      _check_int("symmetric_blocks", self.symmetric_blocks, 1)
    _check_int("symmetric_min_size", self.symmetric_min_size, 1)
    if self.loop_stacks is not None and not isinstance(self.loop_stacks, bool):
      raise ValueError(
          f"Tuning.loop_stacks must be None or a bool, got "
          f"{self.loop_stacks!r}.")
    _check_int("loop_min_entries", self.loop_min_entries, 0)

  def blocks_for(self, m: int) -> int:
    """Row blocks of a symmetric ``m x m`` product (1: one plain matmul)."""
    if self.symmetric_blocks is not None:
      return self.symmetric_blocks
    if _on_cpu() and m >= self.symmetric_min_size:
      return 4
    return 1

  def half_gram(self) -> bool:
    """Whether ``"auto"`` may pick the Gram form in half precision."""
    return (not _on_cpu()) if self.gram_in_half is None else self.gram_in_half

  def restarts_for(self, dtype, steps: int) -> tuple[int, ...]:
    """Steps after which the Gram form restarts, for a compute ``dtype``."""
    if self.gram_restarts is not None:
      return self.gram_restarts
    if jnp.finfo(dtype).bits >= 32:
      return ()
    # Segments of at most 3 steps, the last of at most 2: rounding noise in
    # the Gram matrix grows fastest in the late steps (on rank-deficient
    # bfloat16 input, 5 steps restarted after step 3 keep a cosine of 0.956
    # to U V^T, after step 2 only 0.817; benchmarks/README.md).
    return tuple(sorted(range(steps - 2, 0, -3)))

  def loops_stacks(self) -> bool:
    """Whether stacks run one matrix at a time."""
    return _on_cpu() if self.loop_stacks is None else self.loop_stacks


def _on_cpu() -> bool:
  """Whether the default backend is the CPU: the only backend test behind
  every default above (and ``ns_dtype=None``)."""
  return jax.default_backend() == "cpu"


def resolve(tuning: Tuning | None) -> Tuning:
  """``tuning``, or the defaults; raises ``ValueError`` for anything else."""
  if tuning is None:
    return DEFAULT
  if not isinstance(tuning, Tuning):
    raise ValueError(
        f"tuning must be an optax_muon.Tuning or None, got {tuning!r}.")
  return tuning


DEFAULT = Tuning()
