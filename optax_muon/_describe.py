"""``describe``: the routing and matrix view of every leaf, as a table."""

from __future__ import annotations

import inspect
import math
from typing import Any

import jax
import optax

from optax_muon import _aliases, _labels, _layout, _matrix


def _alias_arg_names() -> frozenset[str]:
  return frozenset(
      name for alias in _aliases.ALIASES.values()
      for name in inspect.signature(alias).parameters)


def _axes_str(axes: tuple[int, ...]) -> str:
  return ",".join(str(a) for a in axes)


def describe(params: optax.Params, *,
             param_labels: _labels.ParamLabels = None,
             batch_axes: _matrix.BatchAxes = None,
             matrix_axes: _matrix.MatrixAxesArg = None,
             shape_scale: str = "spectral",
             group_layers: bool = False,
             layout: _layout.Layout | None = None,
             **alias_kwargs: Any) -> str:
  """A table of how an optimizer sees every leaf of ``params``.

  One row per leaf: its path, shape, label (``muon`` or ``adamw``, as the
  alias would route it), and for Muon leaves the matrix view -- ``fan_in x
  fan_out`` (``matrix``), the leaf axes flattened into each (``in | out``),
  the batch axes as ``axis:size`` (stacked layers, heads) -- and the shape
  scale.
  Notes below the table flag what often goes wrong: stacked layers without
  ``batch_axes`` (with the ``om.stacked(..., axis=...)`` that fits them)
  and the inferred token vocabulary (rule 6 of :func:`muon_labels`): the
  one matrix with that fan-out made a head, or, when several matrices have
  it, all of them named and none made a head by its shape.

  Pass the same keyword arguments as to the alias (those that do not affect
  routing, like ``learning_rate``, are accepted and ignored), so the table
  shows exactly what that optimizer does.

  Example:
    >>> import jax.numpy as jnp, optax_muon as om
    >>> params = {"embed": {"embedding": jnp.zeros((100, 8))},
    ...           "attn": {"query": {"kernel": jnp.zeros((8, 2, 4)),
    ...                              "bias": jnp.zeros((2, 4))}}}
    >>> print(om.describe(params))
    path               shape      label  matrix  in | out  batch  scale
    attn/query/bias    (2, 4)     adamw  -       -         -      -
    attn/query/kernel  (8, 2, 4)  muon   8 x 8   0 | 1,2   -      1.000
    embed/embedding    (100, 8)   adamw  -       -         -      -
    1 Muon matrix in 1 leaf (1 shape group); 808 of 872 entries in AdamW.
    vocabulary 100 (token embedding's rows): no matrix has fan-out 100.
    >>> print(om.describe(params, matrix_axes=om.per_head).splitlines()[2])
    attn/query/kernel  (8, 2, 4)  muon   8 x 4   0 | 2     1:2    1.000

  Args:
    params: the params (a pytree of arrays; an NNX ``State`` such as
      ``nnx.state(model, nnx.Param)``, or a Linen ``variables["params"]``).
    param_labels: as for the alias.
    batch_axes: as for the alias.
    matrix_axes: as for the alias.
    shape_scale: as for the alias.
    group_layers: merge the rows of leaves whose paths differ only in
      integer entries (``blocks/0/...``, ``blocks/1/...``) into one row
      ``blocks/*/...`` with the count, when all else in the rows is equal.
    layout: as for the alias (an :class:`optax_muon.Layout` from
      :func:`optax_muon.infer_layout`): the table then has an ``evidence``
      column -- the primitive and source line that decided each leaf, or
      ``names`` for a name-based default, whose reason is listed below the
      table.
    **alias_kwargs: any other argument of an alias (ignored).

  Returns:
    The table, as a string ready to print.

  Raises:
    ValueError: for a keyword that no alias takes, and for labels or axes
      the alias would reject (the same message).
  """
  unknown = sorted(set(alias_kwargs) - _alias_arg_names())
  if unknown:
    raise ValueError(
        f"describe got {unknown}, which no optimizer of optax_muon takes: "
        "pass the keyword arguments of the alias you use.")
  if shape_scale not in _matrix.SHAPE_SCALES:
    raise ValueError(
        f"Unknown shape_scale {shape_scale!r}: use one of "
        f"{_matrix.SHAPE_SCALES}.")
  _layout.check_exclusive(layout, "describe", param_labels=param_labels,
                          batch_axes=batch_axes, matrix_axes=matrix_axes)
  if layout is not None:
    param_labels, matrix_axes = layout.labels, layout.spec
  axes_fn = _matrix.resolve_matrix_axes(matrix_axes)
  if param_labels is None:
    labels, match = _labels.default_labels(params, batch_axes, axes_fn)
  else:
    labels = _labels.call_or_tree(param_labels, params)
  labels = _labels.check_labels(params, labels, batch_axes, axes_fn)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  label_leaves = treedef.flatten_up_to(labels)

  header = ("path", "shape", "label", "matrix", "in | out", "batch", "scale")
  if layout is not None:
    header += ("evidence",)
  rows = []
  groups, n_matrices, n_muon, adamw_entries, total = set(), 0, 0, 0, 0
  for (path, leaf), lab in sorted(
      zip(leaves, label_leaves), key=lambda x: _matrix.path_str(x[0][0])):
    shape = tuple(getattr(leaf, "shape", ()))
    size = math.prod(shape)
    total += size
    extra = () if layout is None else (layout[path].evidence,)
    if lab == _labels.MUON:
      v = _matrix.matrix_view(path, leaf, batch_axes, matrix_axes=axes_fn)
      groups.add(v.canonical_shape)
      n_matrices += v.num_matrices
      n_muon += 1
      batch = "-" if not v.batch_axes else " ".join(
          f"{a}:{shape[a]}" for a in v.batch_axes)
      rows.append((_matrix.path_str(path), str(shape), lab,
                   f"{v.fan_in} x {v.fan_out}",
                   f"{_axes_str(v.fan_in_axes)} | {_axes_str(v.fan_out_axes)}",
                   batch, f"{v.shape_scale(shape_scale):.3f}") + extra)
    else:
      adamw_entries += size
      rows.append((_matrix.path_str(path), str(shape), str(lab),
                   "-", "-", "-", "-") + extra)
  if group_layers:
    rows = _group_layers(rows)
  widths = [max(len(r[i]) for r in rows + [header])
            for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
           for r in [header] + rows]
  lines.append(
      f"{n_matrices} Muon matri{'x' if n_matrices == 1 else 'ces'} in "
      f"{n_muon} lea{'f' if n_muon == 1 else 'ves'} ({len(groups)} shape group"
      f"{'' if len(groups) == 1 else 's'}); {adamw_entries} of {total} "
      "entries in AdamW.")
  if layout is not None:
    for path, reason in sorted(layout.fallbacks.items()):
      lines.append(f"names: {path}: {reason}.")
  elif param_labels is None:
    note = _labels.vocab_note(match)
    if note is not None:
      lines.append(note)
  hint = (_labels.stacked_layers(params)
          if batch_axes is None and layout is None else None)
  if hint is not None:
    lines.append(
        f"note: the norm scale {hint.path!r} has shape {hint.shape}: stacked "
        f"layers? Pass {hint.advice} so each layer's kernel is its own "
        "matrix.")
  return "\n".join(lines)


def _group_layers(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
  """Merges rows equal but for the integer entries of their paths."""
  merged: dict[tuple[str, ...], int] = {}
  for row in rows:
    parts = row[0].split("/")
    pattern = "/".join("*" if p.isdigit() else p for p in parts)
    key = (pattern,) + row[1:]
    merged[key] = merged.get(key, 0) + 1
  return [((k[0] + f" (x{n})" if n > 1 else k[0]),) + k[1:]
          for k, n in merged.items()]
