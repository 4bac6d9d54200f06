"""QK-clip (MuonClip): cap attention logits by rescaling query and key
kernels after the optimizer's update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_muon import _checks, _matrix

#: ``max_logits`` as :func:`qk_clip`'s update takes it: the attention
#: module's path (its keys joined by ``"/"``, e.g. ``"blocks/0/attn"``) to
#: that module's per-head largest pre-softmax logit, shape ``(heads,)`` or,
#: for stacked layers, ``(layers..., heads)``.
MaxLogits = Mapping[str, Any]


def _path_strs(path) -> tuple[str, ...]:
  """The path's names as strings, without the trailing ``value`` entry that
  ``nnx.Variable`` nodes add."""
  names = [str(_matrix.key_name(k)) for k in path]
  if len(names) > 2 and names[-1] == "value":
    names = names[:-1]
  return tuple(names)


def _head_expander(leaf, logits, path: str):
  """A function that shapes a per-head factor ``(layers..., heads)`` to
  broadcast against the kernel ``leaf``, for a kernel laid out
  ``(layers..., in, heads, head_dim)`` (Flax's ``MultiHeadAttention``) or
  ``(layers..., in, heads * head_dim)`` (a fused ``Dense``/``Linear`` whose
  output features are grouped by head)."""
  logits = jnp.asarray(logits)
  if logits.ndim < 1:
    raise ValueError(
        f"qk_clip: max_logits[{path!r}] must have a heads axis, got shape "
        f"{logits.shape}.")
  heads = logits.shape[-1]
  lead = logits.shape[:-1]
  extra = leaf.ndim - logits.ndim
  shape_ok = leaf.shape[:len(lead)] == lead
  if extra == 2 and shape_ok and leaf.shape[-2] == heads:
    return lambda s: s[..., None, :, None]
  if extra == 1 and shape_ok and leaf.shape[-1] % heads == 0:
    head_dim = leaf.shape[-1] // heads
    return lambda s: jnp.repeat(s, head_dim, axis=-1)[..., None, :]
  raise ValueError(
      f"qk_clip: a kernel of shape {leaf.shape} under {path!r} does not fit "
      f"max_logits of shape {logits.shape}: expected a kernel "
      f"(layers..., in, heads, head_dim) or (layers..., in, heads * "
      f"head_dim) with the same leading layer axes, heads = {heads}.")


def qk_clip(
    tau: float = 100.0,
    *,
    query_names: Sequence[str] = ("query",),
    key_names: Sequence[str] = ("key",),
    kernel_name: str = "kernel",
) -> optax.GradientTransformationExtraArgs:
  r"""QK-clip: rescale a head's query and key kernels when its logits grow.

  MuonClip (Kimi K2): after each optimizer step, for every attention head
  ``h`` whose largest pre-softmax logit in the step, ``S_max^h``, exceeds
  ``tau``, the head's query and key kernels are both multiplied by
  ``sqrt(tau / S_max^h)``, so that the same inputs give logits at most
  ``tau`` (a logit is bilinear in the two). Other heads, and every other
  parameter, are left as the optimizer made them::

    s_h = sqrt(tau / S_max^h)  if S_max^h > tau  else  1
    W_q^h <- s_h W_q^h;   W_k^h <- s_h W_k^h            (new params)

  As a gradient transformation, chained after the optimizer, the rescale of
  the new params ``p + u`` is the extra update ``u' = u + (s_h - 1) (p + u)``
  on those head slices::

    tx = optax.chain(om.muon(0.02), om.qk_clip(tau=100.0))
    updates, state = tx.update(grads, state, params,
                               max_logits={"blocks/0/attn": m0, ...})

  Why this API: the logits are a by-product of the forward pass, which the
  optimizer never sees, so they come in as an extra argument of ``update``
  (optax's ``GradientTransformationExtraArgs``, as ``value`` does for
  line searches); ``optax.chain`` and ``optax.multi_transform`` pass them
  through to it and drop them for transforms that take none, so QK-clip
  composes with every alias (and any other optimizer) without changing it.
  It must come last in the chain: it rescales the params the whole chain's
  update produces. The kernels are found by their names, as the aliases
  find hidden matrices; the logits are keyed by the attention module's
  path, so one call covers every layer.

  Layouts: Flax's ``MultiHeadAttention`` (``nnx`` and ``linen``) keeps
  ``query``/``key`` kernels of shape ``(in, heads, head_dim)``: the defaults
  find them. A fused projection ``(in, heads * head_dim)`` (e.g. an
  ``nnx.Linear`` named ``q``, with ``query_names=("q",)``) is split into
  ``heads`` groups of ``head_dim`` output features. Stacked (scanned)
  layers carry leading layer axes on both the kernel and the logits:
  kernel ``(layers, in, heads, head_dim)``, logits ``(layers, heads)``.
  Biases are not rescaled (Flax's attention has none by default).

  References:
    Kimi Team, "Kimi K2: Open Agentic Intelligence", 2025, section 2.1
    (MuonClip). https://arxiv.org/abs/2507.20534

  Args:
    tau: the logit cap (``> 0``); the paper uses 100.
    query_names: names of the query projection modules (the key in the
      params' path just above ``kernel_name``).
    key_names: names of the key projection modules.
    kernel_name: the name of the kernel leaf in those modules.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``max_logits``: a mapping from each attention module's path (its keys
    joined by ``"/"``, e.g. ``"blocks/0/attn"``; the path of the module that
    holds the query and key projections) to its per-head largest logit
    ``(layers..., heads)``. Every attention module the names find must have
    an entry, and every entry a module. Its state is ``optax.EmptyState``.

  Raises:
    ValueError: for a ``tau`` that is not positive (at construction); at
      ``update``, for missing ``max_logits``, a module without an entry (or
      an entry without a module), or a kernel whose shape does not fit its
      logits.
  """
  _checks.in_range(tau, "tau", 0.0)
  if isinstance(tau, (int, float)) and tau == 0:
    raise ValueError(f"tau must be > 0, got {tau!r}.")
  query_names, key_names = tuple(query_names), tuple(key_names)
  names = set(query_names) | set(key_names)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, max_logits: MaxLogits | None
                = None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("qk_clip needs params: call update(updates, state, "
                       "params, max_logits=...).")
    if max_logits is None:
      raise ValueError(
          "qk_clip needs the per-head max attention logits of the step: "
          "update(updates, state, params, max_logits={module_path: "
          "(layers..., heads) array}).")
    flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
    p_flat = treedef.flatten_up_to(params)
    seen = set()
    out = []
    for (path, u), p in zip(flat, p_flat):
      keys = _path_strs(path)
      if len(keys) < 2 or keys[-1] != kernel_name or keys[-2] not in names:
        out.append(u)
        continue
      module = "/".join(keys[:-2])
      if module not in max_logits:
        raise ValueError(
            f"qk_clip: no max_logits entry for the attention module "
            f"{module!r} (of {'/'.join(keys)}); got entries for "
            f"{sorted(max_logits)}.")
      seen.add(module)
      logits = jnp.asarray(max_logits[module], jnp.float32)
      expand = _head_expander(u, logits, "/".join(keys))
      s = jnp.where(logits > tau,
                    jnp.sqrt(tau / jnp.where(logits > tau, logits, tau)), 1.0)
      s = expand(s)
      new_p = p.astype(jnp.float32) + u.astype(jnp.float32)
      out.append((u.astype(jnp.float32) + (s - 1.0) * new_p).astype(u.dtype))
    unused = sorted(set(max_logits) - seen)
    if unused:
      raise ValueError(
          f"qk_clip: max_logits entries {unused} match no attention module "
          f"with {sorted(names)} projections holding {kernel_name!r}.")
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
