"""Which leaf goes to Muon and which to AdamW."""

from __future__ import annotations

import warnings
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
    "embed_tokens", "token_embedding", "pos_embedding", "position_embedding",
    "tok_emb", "pos_emb", "word_embeddings", "position_embeddings")
#: Path names that mark an output head -- such leaves go to AdamW.
HEAD_NAMES: tuple[str, ...] = (
    "head", "lm_head", "classifier", "output_head", "logits", "readout")
#: Names that mark an output head only as the module owning the leaf
#: (LLaMA's ``output``), since other models use them for whole sub-trees
#: (BERT's ``attention/output/dense``).
HEAD_OWNER_NAMES: tuple[str, ...] = ("output",)

#: Path names of leaves that are never weight matrices, whatever their rank:
#: Flax's biases and norm scales/offsets (stacked by ``nnx.scan`` into
#: ``(layers, d)``, or shaped ``(heads, head_dim)`` in attention).
NON_MATRIX_NAMES: tuple[str, ...] = ("bias", "scale")

# Token tables (their row count is the vocabulary) and positional tables
# (never the vocabulary, whatever their size: GPT-2-medium's wpe is
# (1024, 1024)).
_TOKEN_TABLE_NAMES = frozenset((
    "wte", "tok_embeddings", "embed_tokens", "token_embedding", "tok_emb",
    "word_embeddings", "token_embeddings"))
_POSITION_TABLE_NAMES = frozenset((
    "wpe", "pos_embedding", "position_embedding", "pos_emb",
    "position_embeddings", "pos_embed", "positional_embedding"))

ParamLabels = Union[None, Any, Callable[[optax.Params], Any]]

_STATIC_HINT = (
    "Under optax.inject_hyperparams a function passed as {name} is taken "
    "for a schedule and called with the step count: pass "
    "static_args=om.static_args(alias), which names {name!r}.")


def _names(path) -> list[Any]:
  names = [_matrix.key_name(k) for k in path]
  if len(names) > 1 and names[-1] == "value":
    names = names[:-1]
  return names


def token_vocab_size(params: optax.Params, batch_axes: _matrix.BatchAxes = None
                     ) -> int | None:
  """The token vocabulary: the row count of the token embedding table.

  The token table is a leaf with an :data:`EMBEDDING_NAMES` entry in its
  path and 2 dims besides ``batch_axes``: one named as a token table
  (``wte``, ``tok_embeddings``, ``embed_tokens``, ``token_embedding``,
  ``tok_emb``, ``word_embeddings``) if there is one, else the only table
  not named as a positional one (``wpe``, ``pos_embedding``, ...).
  ``None`` when there is no such table or several are candidates (pass
  ``vocab_size`` to :func:`muon_labels` then), and when the vocabulary equals
  the table's width, which would make every ``(d, d)`` matrix a head.
  """
  named, unnamed = [], []
  embedding = frozenset(EMBEDDING_NAMES)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = set(_names(path))
    if (not names & embedding or _matrix.last_name(path) in NON_MATRIX_NAMES
        or _matrix.matrix_ndim(path, leaf, batch_axes) != 2):
      continue
    spec = batch_axes(path, leaf) if callable(batch_axes) else batch_axes
    try:
      axes = _matrix._normalize_axes(spec, leaf.ndim, "", min_rest=2)
    except ValueError:
      continue
    rows, width = [leaf.shape[a] for a in range(leaf.ndim) if a not in axes]
    if names & _TOKEN_TABLE_NAMES:
      named.append((rows, width))
    elif not names & _POSITION_TABLE_NAMES and not any(
        str(n).startswith("pos") for n in names):
      unnamed.append((rows, width))
  tables = named or unnamed
  if len({t for t in tables}) != 1:
    return None
  rows, width = tables[0]
  return rows if rows != width else None


def muon_labels(
    params: optax.Params,
    *,
    adamw_names: Iterable[str] = EMBEDDING_NAMES + HEAD_NAMES,
    muon_names: Iterable[str] = (),
    min_ndim: int = 2,
    batch_axes: _matrix.BatchAxes = None,
    matrix_axes: _matrix.MatrixAxesArg = None,
    vocab_size: int | str | None = "auto",
) -> Any:
  """Labels every leaf ``"muon"`` or ``"adamw"`` from its key path and shape.

  The rules, in order (the first that applies wins):

  1. a leaf with at least 2 matrix dimensions and a path entry in
     ``muon_names`` is ``"muon"``;
  2. a leaf named ``bias`` or ``scale`` (:data:`NON_MATRIX_NAMES`: Flax's
     biases and norm scales, whatever their rank -- attention biases are
     ``(heads, head_dim)``, stacked ones ``(layers, d)``) is ``"adamw"``;
  3. a leaf with fewer than ``min_ndim`` (at least 2) matrix dimensions --
     its dimensions that are not ``batch_axes``; a leaf with a
     ``matrix_axes`` spec has 2 -- is ``"adamw"``;
  4. a leaf with a path entry in ``adamw_names`` (embeddings, heads), or
     owned by a module named in :data:`HEAD_OWNER_NAMES` (LLaMA's
     ``output``), is ``"adamw"``;
  5. a matrix whose fan-out (in its :func:`matrix_view`) equals the token
     vocabulary is an output head, ``"adamw"`` (Linen's auto-named
     ``Dense_N`` heads, untied heads under any name);
  6. every other leaf is ``"muon"``.

  The vocabulary is ``vocab_size``, or with ``"auto"`` the row count of the
  token embedding (:func:`token_vocab_size`: never a positional table's).

  To extend the rule, pass more names, e.g.
  ``lambda p: om.muon_labels(p, adamw_names=om.EMBEDDING_NAMES +
  om.HEAD_NAMES + ("out_proj",))``; to replace it, pass your own label tree
  or function as ``param_labels`` to any alias. :func:`describe` prints the
  result.

  Args:
    params: a pytree of arrays (Flax NNX ``State`` and linen dicts alike).
    adamw_names: path entries that send a leaf to AdamW.
    muon_names: path entries that send a matrix leaf to Muon regardless.
    min_ndim: fewest matrix dimensions for Muon.
    batch_axes: the optimizer's ``batch_axes`` (axes that index separate
      matrices); they do not count as matrix dimensions.
    matrix_axes: the optimizer's ``matrix_axes``.
    vocab_size: the token vocabulary for rule 5, ``"auto"`` to infer it, or
      ``None`` to skip rule 5.

  Returns:
    A tree like ``params`` with ``"muon"`` / ``"adamw"`` leaves.
  """
  adamw_names, muon_names = frozenset(adamw_names), frozenset(muon_names)
  if vocab_size == "auto":
    vocab_size = token_vocab_size(params, batch_axes)
  elif vocab_size is not None and (
      not isinstance(vocab_size, int) or isinstance(vocab_size, bool)
      or vocab_size < 1):
    raise ValueError(
        f"vocab_size is {vocab_size!r}: give a positive int, 'auto' or None.")
  matrix_axes = _matrix.resolve_matrix_axes(matrix_axes)
  min_ndim = max(min_ndim, 2)

  def label(path, leaf):
    names = set(_names(path))
    ndim = _matrix.matrix_ndim(path, leaf, batch_axes, matrix_axes)
    if ndim >= min_ndim and names & muon_names:
      return MUON
    if _matrix.last_name(path) in NON_MATRIX_NAMES or ndim < min_ndim:
      return ADAMW
    if names & adamw_names or _matrix.owner_name(path) in HEAD_OWNER_NAMES:
      return ADAMW
    if vocab_size is not None:
      view = _matrix.try_matrix_view(path, leaf, batch_axes, matrix_axes)
      if view is not None and view.fan_out == vocab_size:
        return ADAMW
    return MUON

  return jax.tree_util.tree_map_with_path(label, params)


def stacked_norm_scale(params) -> tuple[str, tuple[int, ...]] | None:
  """``(path, shape)`` of the first norm scale with 2 or more dims, the sign
  of stacked (scanned) layers, or ``None``."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if (_matrix.last_name(path) == "scale"
        and len(getattr(leaf, "shape", ())) >= 2):
      return _matrix.path_str(path), tuple(leaf.shape)
  return None


def _warn_if_stacked(params) -> None:
  """Warns when a norm scale has 2+ dims and no ``batch_axes`` is given: the
  sign of stacked (scanned) layers whose matrices would be flattened."""
  found = stacked_norm_scale(params)
  if found is not None:
    path, shape = found
    warnings.warn(
        f"The norm scale {path!r} has shape "
        f"{shape}: the layers look stacked (nnx.vmap/nnx.scan, "
        "linen.scan) but batch_axes is None, so each stacked kernel "
        "(layers, d_in, d_out) is orthogonalised as one (layers*d_in, "
        "d_out) matrix. Pass batch_axes=om.stacked('<name of the stacked "
        "sub-tree>') (om.describe(params) shows every leaf's view).",
        stacklevel=4)


def resolve_labels(param_labels: ParamLabels,
                   batch_axes: _matrix.BatchAxes = None,
                   matrix_axes: _matrix.MatrixAxesArg = None,
                   ) -> Callable[[Any], Any]:
  """Wraps a label tree or function into a checked function of the params.

  ``None`` means :func:`muon_labels` with ``batch_axes`` and
  ``matrix_axes`` (and a warning when the layers look stacked but
  ``batch_axes`` is ``None``). The returned
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

  matrix_axes = _matrix.resolve_matrix_axes(matrix_axes)

  def labels_fn(params):
    if param_labels is None:
      if batch_axes is None and matrix_axes is None:
        _warn_if_stacked(params)
      labels = muon_labels(params, batch_axes=batch_axes,
                           matrix_axes=matrix_axes)
    else:
      labels = param_labels(params) if callable(param_labels) else param_labels
    return check_labels(params, labels, batch_axes, matrix_axes)
  return labels_fn


def check_labels(params, labels, batch_axes: _matrix.BatchAxes = None,
                 matrix_axes: _matrix.MatrixAxesArg = None):
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
      _matrix.matrix_view(path, leaf, batch_axes, who="the 'muon' label",
                          matrix_axes=matrix_axes)
  return labels
