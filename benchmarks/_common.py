"""Shared by the benchmark scripts: the GPT-like tree, interleaved timing,
the machine's description and JSON output.

Timings on a shared machine are noisy, so every script times all of its
candidates round-robin in one process (candidate A, B, C, A, B, C, ...) and
reports medians and ratios to a baseline measured the same way.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# (fan_in, fan_out) of one transformer block's kernels, for width d.
BLOCK_KERNELS = {
    "qkv": lambda d: (d, 3 * d),
    "proj": lambda d: (d, d),
    "fc": lambda d: (d, 4 * d),
    "out": lambda d: (4 * d, d),
}


def gpt_shapes(blocks: int = 6, width: int = 384, vocab: int = 512) -> dict:
  """Shapes of the GPT-like tree of the issue: ``blocks`` blocks with
  qkv/proj/fc/out kernels (to Muon), an embedding and a head (to AdamW)."""
  tree = {"embed": {"embedding": (vocab, width)},
          "head": {"kernel": (width, vocab)}}
  for b in range(blocks):
    tree[f"block_{b}"] = {
        name: {"kernel": fn(width)} for name, fn in BLOCK_KERNELS.items()}
  return tree


def gpt2_shapes(blocks: int = 12, width: int = 768, vocab: int = 50304,
                context: int = 1024) -> dict:
  """A GPT-2-like tree: ``wte (vocab, d)``, ``wpe (context, d)`` and
  ``lm_head (d, vocab)`` (to AdamW), and per block qkv ``(d, 3d)``, proj
  ``(d, d)``, fc ``(d, 4d)`` and out ``(4d, d)`` kernels (to Muon) with
  biases and two LayerNorms' scales and biases (to AdamW in every
  optimizer's default routing)."""
  d = width
  ln = lambda: {"scale": (d,), "bias": (d,)}
  tree = {"wte": (vocab, d), "wpe": (context, d),
          "lm_head": {"kernel": (d, vocab)}, "ln_f": ln()}
  for b in range(blocks):
    tree[f"h_{b}"] = {"ln_1": ln(), "ln_2": ln()}
    tree[f"h_{b}"].update({
        name: {"kernel": fn(d), "bias": (fn(d)[1],)}
        for name, fn in BLOCK_KERNELS.items()})
  return tree


#: --tree presets of step_time.py: (builder, kwargs).
TREES = {
    "cpu": (gpt_shapes, {}),
    "gpt2-small": (gpt2_shapes, {"blocks": 12, "width": 768}),
    "gpt2-medium": (gpt2_shapes, {"blocks": 24, "width": 1024}),
}


def random_tree(shapes: dict, seed: int, scale: float = 0.02,
                dtype=jnp.float32):
  leaves, treedef = jax.tree.flatten(
      shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten(
      [scale * jax.random.normal(k, s, dtype) for k, s in zip(keys, leaves)])


ADAMW_NAMES = frozenset({"embed", "head", "wte", "wpe", "lm_head"})


def is_adamw_path(path) -> bool:
  """Embeddings and heads (the names of both trees above)."""
  names = {getattr(k, "key", None) for k in path}
  return bool(names & ADAMW_NAMES)


def is_muon_leaf(path, shape) -> bool:
  """A 2-D kernel outside the embeddings and heads."""
  return len(shape) == 2 and not is_adamw_path(path)


def muon_matrix_shapes(shapes: dict) -> list[tuple[int, int]]:
  """(fan_in, fan_out) of every leaf the tree routes to Muon."""
  out = []
  jax.tree_util.tree_map_with_path(
      lambda p, s: out.append(s) if is_muon_leaf(p, s) else None, shapes,
      is_leaf=lambda x: isinstance(x, tuple))
  return out


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def interleaved(candidates: dict[str, Callable[[], object]], reps: int,
                warmup: int = 1, log: bool = True,
                cpu_times: dict[str, list[float]] | None = None,
                ) -> dict[str, list[float]]:
  """Times each zero-argument callable ``reps`` times, round-robin (in
  alternating order: A B C, C B A, A B C, ...).

  Each callable must block until its work is done (``block_until_ready``).
  Returns wall-clock seconds per call, per candidate; if ``cpu_times`` is
  given, the process's CPU seconds per call are appended to it too (less
  sensitive to other processes on the machine, but it counts threads that
  spin while waiting).
  """
  for _ in range(warmup):
    for fn in candidates.values():
      fn()
  times: dict[str, list[float]] = {k: [] for k in candidates}
  if cpu_times is not None:
    cpu_times.update({k: [] for k in candidates})
  names = list(candidates)
  for r in range(reps):
    # Alternate the order, so that a drift in the machine's load does not
    # favour the candidates early (or late) in the round.
    for name in names if r % 2 == 0 else names[::-1]:
      fn = candidates[name]
      c0, t0 = _cpu_seconds(), time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
      if cpu_times is not None:
        cpu_times[name].append(_cpu_seconds() - c0)
    if log:
      print(f"  rep {r + 1}/{reps} done", flush=True)
  return times


def summary(seconds: list[float]) -> dict:
  a = np.asarray(seconds) * 1e3
  return {"median_ms": float(np.median(a)), "p25_ms": float(np.percentile(a, 25)),
          "p75_ms": float(np.percentile(a, 75)), "min_ms": float(a.min()),
          "reps": len(a)}


def machine() -> dict:
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  try:
    load = os.getloadavg()
  except OSError:
    load = None
  return {
      "backend": jax.default_backend(),
      "device": getattr(dev, "device_kind", str(dev)),
      "cpu": cpu,
      "cpu_count": os.cpu_count(),
      "load_average_at_start": load,
      "jax": jax.__version__,
      "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def write_json(path: str | None, payload: dict) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1)
  print(f"wrote {path}")


def table(rows: list[list], header: list[str]) -> str:
  cells = [header] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  fmt = lambda r: "| " + " | ".join(
      c.ljust(w) for c, w in zip(r, widths)) + " |"
  lines = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  return "\n".join(lines + [fmt(r) for r in cells[1:]])
