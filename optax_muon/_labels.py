"""Which leaf goes to Muon and which to AdamW."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Union

import jax
import optax

from optax_muon import _matrix

MUON = "muon"
ADAMW = "adamw"
LABELS = (MUON, ADAMW)

#: Path names that mark an embedding table (Flax ``Embed`` names its table
#: ``embedding``) -- such leaves go to AdamW.
#: Also the tables of Gemma (``embedder/input_embedding``, gemma
#: ``gm/nn/_modules.py``), MaxText (``token_embedder``,
#: ``position_embedder``, ``layers/decoders.py``) and Equinox's examples
#: (``token_embedder``, ``position_embedder``, ``segment_embedder`` in
#: ``docs/examples/bert.ipynb``).
EMBEDDING_NAMES: tuple[str, ...] = (
    "embedding", "embed", "embeddings", "wte", "wpe", "tok_embeddings",
    "embed_tokens", "token_embedding", "pos_embedding", "position_embedding",
    "tok_emb", "pos_emb", "word_embeddings", "position_embeddings",
    "input_embedding", "token_embedder", "position_embedder",
    "segment_embedder")
#: Path names that mark an output head -- such leaves go to AdamW (MaxText's
#: ``logits_dense``, Equinox's ``classifier_head`` in its BERT example,
#: ``unembed``).
HEAD_NAMES: tuple[str, ...] = (
    "head", "lm_head", "classifier", "output_head", "logits", "readout",
    "unembed", "logits_dense", "classifier_head")
#: Names that mark an output head only as the module owning the leaf
#: (LLaMA's ``output``), since other models use them for whole sub-trees
#: (BERT's ``attention/output/dense``).
HEAD_OWNER_NAMES: tuple[str, ...] = ("output",)

#: Path names of leaves that are never weight matrices, whatever their rank:
#: Flax's biases and norm scales/offsets (stacked by ``nnx.scan`` into
#: ``(layers, d)``, or shaped ``(heads, head_dim)`` in attention).
NON_MATRIX_NAMES: tuple[str, ...] = ("bias", "scale")

#: Class names of the norm layers whose scale is a ``weight`` (Equinox's
#: ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, Haliax's ``LayerNorm``,
#: ``RmsNorm``): their leaves go to AdamW whatever their rank.
_NORM_CLASS_SUFFIXES = ("Norm", "norm")
#: Class names of embedding tables (Equinox's and Haliax's ``Embedding``).
_EMBEDDING_CLASSES = frozenset(("Embedding",))

# Token tables (their row count is the vocabulary) and positional tables
# (never the vocabulary, whatever their size: GPT-2-medium's wpe is
# (1024, 1024)).
_TOKEN_TABLE_NAMES = frozenset((
    "wte", "tok_embeddings", "embed_tokens", "token_embedding", "tok_emb",
    "word_embeddings", "token_embeddings", "input_embedding",
    "token_embedder"))
_POSITION_TABLE_NAMES = frozenset((
    "wpe", "pos_embedding", "position_embedding", "pos_emb",
    "position_embeddings", "pos_embed", "positional_embedding",
    "position_embedder", "segment_embedder"))

ParamLabels = Union[None, Any, Callable[[optax.Params], Any]]

_STATIC_HINT = (
    "Under optax.inject_hyperparams a function passed as {name} is taken "
    "for a schedule and called with the step count: pass "
    "static_args=om.static_args(alias), which names {name!r}.")


def _names(path) -> list[Any]:
  return _matrix.logical_names(path)


def is_norm_name(name: Any) -> bool:
  """Whether a module name is a norm layer's: it contains ``norm``
  (``layernorm``, ``input_layernorm``, ``pre_attention_norm``, ``norm1``)
  or starts with ``ln`` then ``_``, a digit or nothing (``ln``, ``ln1``,
  ``ln_f``, GPT-2's ``ln_1``)."""
  if not isinstance(name, str):
    return False
  low = name.lower()
  return "norm" in low or re.match(r"ln(_|\d|$)", low) is not None


def _owner_classes(params, nodes: dict[str, str] | None = None
                   ) -> dict[str, str]:
  """``path_str -> class name`` of the module that owns each leaf (and, in
  ``nodes`` if given, ``path_str -> class name`` of every module node).

  The nearest enclosing pytree node that is neither a builtin container nor
  a Haliax ``NamedArray`` (whose class is the array's wrapper, not the
  layer): an ``eqx.nn.LayerNorm`` for its ``weight``, Haliax's
  ``LayerNorm`` for its ``weight/0``. Nodes of dicts, lists and NNX
  ``State`` name no class: those trees say nothing this way.
  """
  out: dict[str, str] = {}
  skip = (dict, list, tuple)

  def walk(node, prefix, owner):
    if node is None:
      return
    children, _ = jax.tree_util.tree_flatten_with_path(
        node, is_leaf=lambda x: x is not node)
    if len(children) == 1 and children[0][0] == () and children[0][1] is node:
      if owner is not None:
        out[_matrix.path_str(prefix)] = owner
      return
    cls = type(node)
    name = cls.__name__
    if not isinstance(node, skip) and name != "NamedArray" and not (
        cls.__module__.startswith("flax")):
      owner = name
      if nodes is not None:
        nodes[_matrix.path_str(prefix)] = name
    for path, child in children:
      walk(child, prefix + tuple(path), owner)

  walk(params, (), None)
  return out


def token_vocab_size(params: optax.Params, batch_axes: _matrix.BatchAxes = None
                     ) -> int | None:
  """The token vocabulary: the row count of the token embedding table.

  The token table is a leaf with an :data:`EMBEDDING_NAMES` entry in its
  path (or owned by an Equinox/Haliax ``Embedding``) and 2 dims besides
  ``batch_axes``: one named as a token table (``wte``, ``tok_embeddings``,
  ``embed_tokens``, ``token_embedding``, ``tok_emb``, ``word_embeddings``,
  Gemma's ``input_embedding``, ``token_embedder``) if there is one, else
  the only table not named as a positional one (``wpe``, ``pos_embedding``,
  ``position_embedder``, ...). ``None`` when there is no such table or
  several are candidates (pass ``vocab_size`` to :func:`muon_labels` then),
  and when the vocabulary equals the table's width, which would make every
  ``(d, d)`` matrix a head.
  """
  named, unnamed = [], []
  embedding = frozenset(EMBEDDING_NAMES)
  classes = _owner_classes(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = set(_names(path))
    is_table = bool(names & embedding) or (
        classes.get(_matrix.path_str(path)) in _EMBEDDING_CLASSES)
    if (not is_table or _matrix.last_name(path) in NON_MATRIX_NAMES
        or _matrix.matrix_ndim(path, leaf, batch_axes) != 2):
      continue
    spec = _matrix.batch_spec(batch_axes, path, leaf)
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


class VocabMatch(NamedTuple):
  """What the head-by-vocabulary rule (rule 6 of :func:`muon_labels`) saw.

  Attributes:
    vocab_size: the vocabulary it used, or ``None`` (rule off).
    matched: paths of the matrix leaves outside the embeddings whose fan-out
      is ``vocab_size`` (heads by name included).
    heads: the paths the rule made heads: ``matched`` when it has one entry
      (or ``vocab_size`` was given explicitly), else none.
    kept: matched leaves that stay in Muon because the match is ambiguous
      (none when one of the matches is a head by its name: then the others
      are hidden layers, and nothing is ambiguous).
  """

  vocab_size: int | None
  matched: tuple[str, ...]
  heads: tuple[str, ...]
  kept: tuple[str, ...]


def _is_non_matrix(names, owner_class) -> bool:
  """Rule 2: biases, norm scales, and the ``weight`` of a norm layer."""
  leaf = names[-1] if names else None
  if leaf in NON_MATRIX_NAMES:
    return True
  if owner_class is not None and owner_class.endswith(_NORM_CLASS_SUFFIXES):
    return True
  owner = names[-2] if len(names) > 1 else None
  return leaf == "weight" and is_norm_name(owner)


def _mlp_output_layers(paths: list[list[Any]],
                       nodes: dict[str, str]) -> set[str]:
  """Equinox ``eqx.nn.MLP``'s output layer: its head.

  equinox 0.13.8, ``equinox/nn/_mlp.py``: ``MLP.layers`` is a tuple of
  ``Linear``s, so their leaves are ``layers/<i>/weight``; the last ``i`` is
  the output layer. Taken as the model's head when the MLP is the model or
  a field of it (at most one name, no index, before ``layers``): an MLP
  deeper in the tree is a block's feed-forward, whose last layer is hidden.
  Where the tree has module classes (``nodes``: path -> class name), the
  node holding ``layers`` must be an ``MLP`` (a model's own ``layers`` list
  followed by a separate head is not one).
  """
  last: dict[tuple, int] = {}
  for names in paths:
    if (len(names) >= 3 and names[-1] == "weight" and names[-3] == "layers"
        and _matrix.is_index(names[-2]) and len(names) <= 4
        and not any(_matrix.is_index(n) for n in names[:-3])):
      owner = "/".join(str(n) for n in names[:-3]) or "<root>"
      if nodes.get(owner, "MLP") != "MLP":
        continue
      key = tuple(names[:-2])
      last[key] = max(last.get(key, -1), int(names[-2]))
  return {"/".join(str(n) for n in key + (i, "weight"))
          for key, i in last.items()}


def _label_tree(params, *, adamw_names, muon_names, min_ndim, batch_axes,
                matrix_axes, vocab_size) -> tuple[Any, VocabMatch]:
  """:func:`muon_labels`, with what the vocabulary rule saw."""
  adamw_names, muon_names = frozenset(adamw_names), frozenset(muon_names)
  explicit = vocab_size != "auto"
  if vocab_size == "auto":
    vocab_size = token_vocab_size(params, batch_axes)
  elif vocab_size is not None and (
      not isinstance(vocab_size, int) or isinstance(vocab_size, bool)
      or vocab_size < 1):
    raise ValueError(
        f"vocab_size is {vocab_size!r}: give a positive int, 'auto' or None.")
  matrix_axes = _matrix.resolve_matrix_axes(matrix_axes)
  min_ndim = max(min_ndim, 2)
  nodes: dict[str, str] = {}
  classes = _owner_classes(params, nodes)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  mlp_heads = _mlp_output_layers([_names(p) for p, _ in leaves], nodes)
  embedding = frozenset(EMBEDDING_NAMES)

  # Rules 1-5 by names and ranks; None where only rule 6 may still decide.
  by_name: dict[str, str | None] = {}
  matched: list[str] = []
  for path, leaf in leaves:
    where = _matrix.path_str(path)
    names = _names(path)
    name_set = set(names)
    owner_class = classes.get(where)
    ndim = _matrix.matrix_ndim(path, leaf, batch_axes, matrix_axes)
    if ndim >= min_ndim and name_set & muon_names:
      by_name[where] = MUON
      continue
    if _is_non_matrix(names, owner_class) or ndim < min_ndim:
      by_name[where] = ADAMW
      continue
    is_table = bool(name_set & embedding) or owner_class in _EMBEDDING_CLASSES
    if (name_set & adamw_names or is_table
        or _matrix.owner_name(path) in HEAD_OWNER_NAMES
        or "/".join(str(n) for n in names) in mlp_heads):
      by_name[where] = ADAMW
    else:
      by_name[where] = None
    if vocab_size is not None and not is_table:
      view = _matrix.try_matrix_view(path, leaf, batch_axes, matrix_axes)
      if view is not None and view.fan_out == vocab_size:
        matched.append(where)

  if explicit or len(matched) == 1:
    heads = tuple(matched)
    kept: tuple[str, ...] = ()
  else:
    heads = ()
    # A match that is a head by its name (``head``, ``lm_head``) settles
    # it: the other matches are hidden layers as wide as the vocabulary.
    named_head = any(by_name[w] == ADAMW for w in matched)
    kept = () if named_head else tuple(
        w for w in matched if by_name[w] is None)
  head_set = set(heads)

  def label(path, leaf):
    del leaf
    where = _matrix.path_str(path)
    decided = by_name[where]
    if decided is not None:
      return decided
    return ADAMW if where in head_set else MUON

  labels = jax.tree_util.tree_map_with_path(label, params)
  return labels, VocabMatch(vocab_size, tuple(matched), heads, kept)


def _summary(paths: Iterable[str], limit: int = 4) -> str:
  """Paths grouped by their pattern (indices as ``*``), at most ``limit``."""
  groups: dict[str, int] = {}
  for p in paths:
    pattern = "/".join("*" if q.isdigit() else q for q in p.split("/"))
    groups[pattern] = groups.get(pattern, 0) + 1
  items = [f"{k} (x{n})" if n > 1 else k for k, n in groups.items()]
  more = len(items) - limit
  return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def vocab_note(match: VocabMatch) -> str | None:
  """One line on the vocabulary rule for :func:`describe`, or ``None``."""
  v = match.vocab_size
  if v is None:
    return None
  if not match.matched:
    return f"vocabulary {v} (token embedding's rows): no matrix has fan-out {v}."
  if match.heads and len(match.matched) == 1:
    return (f"vocabulary {v} (token embedding's rows): {match.heads[0]}, the "
            f"one matrix with fan-out {v}, is a head.")
  if match.heads:
    return (f"vocabulary {v} (vocab_size given): the matrices with fan-out "
            f"{v} are heads: {_summary(match.heads)}.")
  if not match.kept:
    return (f"vocabulary {v} (token embedding's rows): {len(match.matched)} "
            f"matrices have fan-out {v} ({_summary(match.matched)}); the "
            "head among them is named as one, so the others stay in Muon.")
  return (f"vocabulary {v} (token embedding's rows): {len(match.matched)} "
          f"matrices have fan-out {v} ({_summary(match.matched)}): ambiguous, "
          "so none is made a head by its shape.")


def _warn_ambiguous(match: VocabMatch, stacklevel: int) -> None:
  if not match.kept:
    return
  v = match.vocab_size
  warnings.warn(
      f"The token vocabulary is {v} (the token embedding's rows) and "
      f"{len(match.matched)} matrices have fan-out {v}: "
      f"{_summary(match.matched)}. That is ambiguous, so none of them is "
      f"made an output head by its shape, and {_summary(match.kept)} stay "
      "in Muon. If one of them is the model's output head, name it: "
      "param_labels=lambda p: om.muon_labels(p, adamw_names="
      "om.EMBEDDING_NAMES + om.HEAD_NAMES + ('<its name>',), "
      "vocab_size=None) (vocab_size=None also silences this warning; "
      "om.describe(params) shows every leaf).",
      UserWarning, stacklevel=stacklevel)


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
     ``(heads, head_dim)``, stacked ones ``(layers, d)``), and the
     ``weight`` of a norm layer (an Equinox or Haliax ``LayerNorm``,
     ``RMSNorm``, ... by its class, or a module whose name contains
     ``norm`` or starts with ``ln``: ``ln_1``, ``input_layernorm``) is
     ``"adamw"``; a Haliax ``NamedArray``'s trailing index (``ln_1/bias/0``)
     is not a name (:func:`optax_muon._matrix.logical_names`);
  3. a leaf with fewer than ``min_ndim`` (at least 2) matrix dimensions --
     its dimensions that are not ``batch_axes``; a leaf with a
     ``matrix_axes`` spec has 2 -- is ``"adamw"``;
  4. a leaf with a path entry in ``adamw_names`` (embeddings, heads), owned
     by a module named in :data:`HEAD_OWNER_NAMES` (LLaMA's ``output``) or
     by an Equinox/Haliax ``Embedding``, is ``"adamw"``;
  5. the output layer of an Equinox ``eqx.nn.MLP`` that is the model or a
     field of it (``layers/<last>/weight``) is ``"adamw"``;
  6. the output head by its shape: when exactly one matrix outside the
     embeddings (heads by name included) has a fan-out (in its
     :func:`matrix_view`) equal to the token vocabulary, it is ``"adamw"``
     (Linen's auto-named ``Dense_N`` heads, untied heads under any name).
     When several match (a hidden layer as wide as the vocabulary:
     ``(64, 256)`` MLP kernels with a byte vocabulary, a Llama with
     ``intermediate_size == vocab_size``), none is made a head by its
     shape, and a ``UserWarning`` names them -- unless one of them is a
     head by its name (rule 4), which settles it: the others stay in Muon;
  7. every other leaf is ``"muon"``.

  The vocabulary is ``vocab_size`` (then every matrix with that fan-out is
  a head, as you said), or with ``"auto"`` the row count of the token
  embedding (:func:`token_vocab_size`: never a positional table's).

  To extend the rule, pass more names, e.g.
  ``lambda p: om.muon_labels(p, adamw_names=om.EMBEDDING_NAMES +
  om.HEAD_NAMES + ("out_proj",))``; to replace it, pass your own label tree
  or function as ``param_labels`` to any alias. :func:`describe` prints the
  result.

  Args:
    params: a pytree of arrays (Flax NNX ``State``, linen dicts, Equinox
      modules filtered with ``eqx.filter(model, eqx.is_array)`` and their
      ``None`` leaves, any custom pytree).
    adamw_names: path entries that send a leaf to AdamW.
    muon_names: path entries that send a matrix leaf to Muon regardless.
    min_ndim: fewest matrix dimensions for Muon.
    batch_axes: the optimizer's ``batch_axes`` (axes that index separate
      matrices); they do not count as matrix dimensions.
    matrix_axes: the optimizer's ``matrix_axes``.
    vocab_size: the token vocabulary for rule 6, ``"auto"`` to infer it, or
      ``None`` to skip rule 6.

  Returns:
    A tree like ``params`` with ``"muon"`` / ``"adamw"`` leaves.
  """
  labels, match = _label_tree(
      params, adamw_names=adamw_names, muon_names=muon_names,
      min_ndim=min_ndim, batch_axes=batch_axes, matrix_axes=matrix_axes,
      vocab_size=vocab_size)
  _warn_ambiguous(match, stacklevel=3)
  return labels


def default_labels(params, batch_axes: _matrix.BatchAxes = None,
                   matrix_axes: _matrix.MatrixAxesArg = None
                   ) -> tuple[Any, VocabMatch]:
  """The aliases' default labels (:func:`muon_labels` with its defaults)
  and what its vocabulary rule saw, without warning."""
  return _label_tree(
      params, adamw_names=EMBEDDING_NAMES + HEAD_NAMES, muon_names=(),
      min_ndim=2, batch_axes=batch_axes, matrix_axes=matrix_axes,
      vocab_size="auto")


class StackedHint(NamedTuple):
  """Signs of stacked (scanned) layers, and the ``batch_axes`` that fits.

  Attributes:
    path: a norm scale with more than one dimension (``layers/ln1/scale
      (layers, d)``).
    shape: its shape.
    names: the stacked sub-trees' names for :func:`om.stacked
      <optax_muon.stacked>` (empty when no name is common to them).
    axis: the layer axis: the axis of the stacked norm scales whose size is
      not the model's width (MaxText's ``param_scan_axis=1`` puts it at 1).
  """

  path: str
  shape: tuple[int, ...]
  names: tuple[str, ...]
  axis: int

  @property
  def advice(self) -> str:
    """The ``batch_axes=...`` argument to pass."""
    names = (", ".join(repr(n) for n in self.names) if self.names
             else "'<name of the stacked sub-tree>'")
    return f"batch_axes=om.stacked({names}, axis={self.axis})"


def stacked_layers(params) -> StackedHint | None:
  """The first norm scale with 2 or more dims -- the sign of stacked
  (scanned) layers -- and the ``om.stacked(...)`` call that views them, or
  ``None``.

  Norm scales are the leaves of rule 2 of :func:`muon_labels` that are not
  biases (``scale``; a norm layer's ``weight``, Haliax's ``weight/0``).
  The layer axis is the one whose size is not the model's width (the size
  of the 1-D norm scales -- the final norm's -- or the embedding's width);
  axis 0 when that does not settle it. The names are the deepest path entry
  common to every stacked norm scale, else each one's enclosing entry.
  """
  classes = _owner_classes(params)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  norms, widths = [], set()
  embedding = frozenset(EMBEDDING_NAMES)
  for path, leaf in leaves:
    shape = tuple(getattr(leaf, "shape", ()))
    names = _names(path)
    where = _matrix.path_str(path)
    if (names and names[-1] != "bias"
        and _is_non_matrix(names, classes.get(where))):
      if len(shape) >= 2:
        norms.append((where, shape, names))
      elif len(shape) == 1:
        widths.add(shape[0])
    elif set(names) & embedding and len(shape) == 2:
      widths.add(shape[-1])
  if not norms:
    return None
  axes = set()
  for _, shape, _ in norms:
    if len(shape) == 2:
      fits = [a for a in (0, 1) if shape[a] in widths]
      if len(fits) == 1:
        axes.add(1 - fits[0])
  axis = axes.pop() if len(axes) == 1 else 0
  prefixes = [[n for n in names[:-2]] for _, _, names in norms]
  common = prefixes[0]
  for p in prefixes[1:]:
    k = 0
    while k < min(len(common), len(p)) and common[k] == p[k]:
      k += 1
    common = common[:k]
  strs = [n for n in common if isinstance(n, str) and not n.isdigit()]
  if strs:
    stack_names = (strs[-1],)
  else:
    found = []
    for p in prefixes:
      own = [n for n in p if isinstance(n, str) and not n.isdigit()]
      if own and own[-1] not in found:
        found.append(own[-1])
    stack_names = tuple(found)
  where, shape, _ = norms[0]
  return StackedHint(where, shape, stack_names, axis)


def _warn_if_stacked(params) -> None:
  """Warns when a norm scale has 2+ dims and no ``batch_axes`` is given: the
  sign of stacked (scanned) layers whose matrices would be flattened."""
  hint = stacked_layers(params)
  if hint is not None:
    warnings.warn(
        f"The norm scale {hint.path!r} has shape "
        f"{hint.shape}: the layers look stacked (nnx.vmap/nnx.scan, "
        "linen.scan, eqx.filter_vmap, haliax Stacked) with the layer axis "
        f"at {hint.axis}, but batch_axes is None, so each stacked kernel "
        "(e.g. (layers, d_in, d_out)) is orthogonalised as one flattened "
        f"matrix. Pass {hint.advice} "
        "(om.describe(params) shows every leaf's view).",
        stacklevel=4)


def resolve_labels(param_labels: ParamLabels,
                   batch_axes: _matrix.BatchAxes = None,
                   matrix_axes: _matrix.MatrixAxesArg = None,
                   ) -> Callable[[Any], Any]:
  """Wraps a label tree or function into a checked function of the params.

  ``None`` means :func:`muon_labels` with ``batch_axes`` and
  ``matrix_axes`` (and a warning when the layers look stacked but
  ``batch_axes`` is ``None``). A label tree may be any pytree like the
  params -- an ``eqx.Module`` too, though it is callable
  (:func:`optax_muon._matrix.is_function`). The returned
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
      labels, match = default_labels(params, batch_axes, matrix_axes)
      _warn_ambiguous(match, stacklevel=4)
    else:
      labels = call_or_tree(param_labels, params)
    return check_labels(params, labels, batch_axes, matrix_axes)
  return labels_fn


def call_or_tree(param_labels, params):
  """``param_labels(params)`` for a function, the tree itself otherwise."""
  return (param_labels(params) if _matrix.is_function(param_labels)
          else param_labels)


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
