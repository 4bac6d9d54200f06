"""Which leaf goes to Muon and which to AdamW."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Union

import jax
import optax

from optax_muon import _matrix

MUON = "muon"
ADAMW = "adamw"
LABELS = (MUON, ADAMW)

#: Path names that mark an embedding table (Flax ``Embed`` names its table
#: ``embedding``) -- such leaves go to AdamW.
EMBEDDING_NAMES: tuple[str, ...] = (
    "embedding", "embed", "embeddings", "wte", "wpe", "tok_embeddings",
    "embed_tokens", "token_embedding", "pos_embedding", "position_embedding")
#: Path names that mark an output head -- such leaves go to AdamW.
HEAD_NAMES: tuple[str, ...] = (
    "head", "lm_head", "classifier", "output_head", "logits", "readout")

#: Path names of leaves that are never weight matrices, whatever their rank:
#: Flax's biases and norm scales/offsets (stacked by ``nnx.scan`` into
#: ``(layers, d)``, or shaped ``(heads, head_dim)`` in attention).
NON_MATRIX_NAMES: tuple[str, ...] = ("bias", "scale")

ParamLabels = Union[None, Any, Callable[[optax.Params], Any]]

_STATIC_HINT = (
    "Under optax.inject_hyperparams a function passed as {name} is taken "
    "for a schedule and called with the step count: pass "
    "static_args=om.static_args(alias), which names {name!r}.")


def muon_labels(
    params: optax.Params,
    *,
    adamw_names: Iterable[str] = EMBEDDING_NAMES + HEAD_NAMES,
    muon_names: Iterable[str] = (),
    min_ndim: int = 2,
    batch_axes: _matrix.BatchAxes = None,
) -> Any:
  """Labels every leaf ``"muon"`` or ``"adamw"`` from its key path and shape.

  A leaf is ``"muon"`` when it has at least ``min_ndim`` matrix dimensions
  (its dimensions that are not ``batch_axes``), its last key is not a
  bias or norm name (:data:`NON_MATRIX_NAMES`) and no entry of its key path
  is in ``adamw_names`` (embeddings, output heads); every other leaf --
  biases, norm scales, scalars, embeddings, heads -- is ``"adamw"``. A path
  entry in ``muon_names`` forces ``"muon"`` (still only for leaves with at
  least 2 matrix dimensions).

  To extend the rule, pass more names, e.g.
  ``lambda p: om.muon_labels(p, adamw_names=om.EMBEDDING_NAMES +
  om.HEAD_NAMES + ("out_proj",))``; to replace it, pass your own label tree
  or function as ``param_labels`` to any alias.

  Args:
    params: a pytree of arrays (Flax NNX ``State`` and linen dicts alike).
    adamw_names: path entries that send a leaf to AdamW.
    muon_names: path entries that send a matrix leaf to Muon regardless.
    min_ndim: fewest matrix dimensions for Muon.
    batch_axes: the optimizer's ``batch_axes`` (axes that index separate
      matrices); they do not count as matrix dimensions.

  Returns:
    A tree like ``params`` with ``"muon"`` / ``"adamw"`` leaves.
  """
  adamw_names, muon_names = frozenset(adamw_names), frozenset(muon_names)

  def label(path, leaf):
    names = {_matrix.key_name(k) for k in path}
    ndim = _matrix.matrix_ndim(path, leaf, batch_axes)
    if ndim >= max(min_ndim, 2) and names & muon_names:
      return MUON
    if _matrix.last_name(path) in NON_MATRIX_NAMES:
      return ADAMW
    if ndim >= max(min_ndim, 2) and not names & adamw_names:
      return MUON
    return ADAMW

  return jax.tree_util.tree_map_with_path(label, params)


def resolve_labels(param_labels: ParamLabels,
                   batch_axes: _matrix.BatchAxes = None
                   ) -> Callable[[Any], Any]:
  """Wraps a label tree or function into a checked function of the params.

  ``None`` means :func:`muon_labels` with ``batch_axes``. The returned
  function raises ``ValueError`` naming the leaf for a label other than
  ``"muon"`` / ``"adamw"``, for a label tree whose structure does not match
  the params, and for a ``"muon"`` leaf that is not a floating matrix (with
  ``batch_axes``).
  """
  if isinstance(param_labels, (str, jax.Array)):
    raise ValueError(
        f"param_labels is {param_labels!r}, a single value, not a tree of "
        "labels or a function of the params. "
        + _STATIC_HINT.format(name="param_labels"))

  def labels_fn(params):
    labels = param_labels(params) if callable(param_labels) else (
        param_labels if param_labels is not None
        else muon_labels(params, batch_axes=batch_axes))
    return check_labels(params, labels, batch_axes)
  return labels_fn


def check_labels(params, labels, batch_axes: _matrix.BatchAxes = None):
  """Validates ``labels`` against ``params``; returns them unchanged."""
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  try:
    label_leaves = treedef.flatten_up_to(labels)
  except (ValueError, TypeError) as e:
    param_paths = [_matrix.path_str(p) for p, _ in leaves_with_path]
    label_paths = [
        _matrix.path_str(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(labels)[0]]
    only_p = sorted(set(param_paths) - set(label_paths))[:5]
    only_l = sorted(set(label_paths) - set(param_paths))[:5]
    raise ValueError(
        "param_labels does not match the params' tree: leaves only in the "
        f"params {only_p}, only in the labels {only_l}. Build the labels "
        "from the same tree (e.g. om.muon_labels(params)) or pass a function "
        f"of the params. ({e})") from None
  for (path, leaf), lab in zip(leaves_with_path, label_leaves):
    where = _matrix.path_str(path)
    if lab not in LABELS:
      raise ValueError(
          f"Unknown label {lab!r} for the leaf {where!r}: use 'muon' or "
          "'adamw'.")
    if lab == MUON:
      _matrix.matrix_view(path, leaf, batch_axes, who="the 'muon' label")
  return labels
