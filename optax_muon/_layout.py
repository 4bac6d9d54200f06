"""``infer_layout``: which leaves are weight matrices, read from the model's
own computation.

Names and shapes cannot say which axes of a weight are its fan-in: a ``(D,
L, N, H)`` kernel and an ``(N, D, H)`` einsum weight look alike, and
PyTorch-layout ``(out, in)`` kernels look like Flax's ``(in, out)``. The
forward pass can: it multiplies each weight matrix by activations in a
``dot_general`` or a convolution, whose dimension numbers name the
contracted axes (fan-in), the batch axes, and so the free ones (fan-out).

:func:`infer_layout` traces ``fn(params, *args)`` to a jaxpr (abstractly:
no FLOPs run, no activation is allocated) and follows every param leaf's
axes through the shape primitives and the sub-jaxprs of ``jit``, ``scan``,
``cond``, ``while``, ``remat`` and ``custom_jvp`` / ``custom_vjp`` to the
primitives that consume it:

* multiplied with activations by ``dot_general`` / ``conv_general_dilated``:
  a Muon matrix -- contracted axes are the fan-in (for a convolution its
  input-feature and spatial axes), free axes the fan-out, ``dot_general``
  batch axes and the axes a ``scan`` runs over (or that are indexed away)
  batch axes; so is a free axis of its own that the code takes apart element
  by element right after the product (``k, v = jnp.einsum("bsd,cdh->cbsh",
  x, w)``: ``c`` indexes two matrices), while a fused axis split into chunks
  (GPT-2's ``c_attn``) stays one fan-out;
* a matrix whose product reaches the function's output with no further
  weight product (the head), or a table that is also gathered (a tied
  embedding and head): AdamW;
* only gathered (embeddings), only elementwise (norm scales, biases),
  scalars: AdamW;
* anything else -- two consumers that disagree, axes that a reshape mixes,
  a primitive that cannot be followed, a leaf the function never uses: the
  name-based default (:func:`optax_muon.muon_labels` and the default
  :func:`optax_muon.matrix_view`), with the reason recorded.

The result is a :class:`Layout`, an ordinary immutable value that every
optimizer takes as ``layout=``.

References:
  The jaxpr language: https://docs.jax.dev/en/latest/jaxpr.html
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from optax_muon import _labels, _matrix

# ------------------------------------------------------------ the value ----


@dataclasses.dataclass(frozen=True)
class LeafLayout:
  """What one leaf is: its label, its matrix axes and why.

  Attributes:
    shape: the leaf's shape.
    label: ``"muon"`` or ``"adamw"``.
    fan_in: sorted leaf axes flattened into the fan-in (``()`` for AdamW).
    fan_out: sorted leaf axes flattened into the fan-out (``()`` for AdamW).
    batch: the other axes of a Muon leaf, which index separate matrices.
    evidence: the primitive that decided it and its source line (``"dot_general
      at model.py:12 (__call__)"``), or ``"names"`` for the name-based default.
    reason: for a name-based default, why the computation did not decide;
      else ``None``.
  """

  shape: tuple[int, ...]
  label: str
  fan_in: tuple[int, ...] = ()
  fan_out: tuple[int, ...] = ()
  batch: tuple[int, ...] = ()
  evidence: str = ""
  reason: str | None = None

  @property
  def matrix_axes(self) -> _matrix.MatrixAxes | None:
    """:class:`optax_muon.MatrixAxes` of a Muon leaf, ``None`` otherwise."""
    if self.label != _labels.MUON:
      return None
    return _matrix.MatrixAxes(self.fan_in, self.fan_out)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Per leaf of a params tree: label, fan-in / fan-out / batch axes and the
  evidence for them. Built by :func:`infer_layout`; pass it to any optimizer
  as ``layout=`` (in place of ``param_labels``, ``batch_axes`` and
  ``matrix_axes``).

  A ``Layout`` is an immutable value: it compares with ``==``, hashes, and
  pickles, so compute it once, outside ``jit``, and keep it with the
  checkpoint if you like. Keys are leaf paths as
  :func:`optax_muon.describe` prints them (``"blocks/0/mlp/kernel"``).

  Reading it:

  * ``layout["blocks/0/mlp/kernel"]`` is that leaf's :class:`LeafLayout`;
    ``layout.items()`` / ``iter(layout)`` go over all of them;
  * ``layout.labels(params)`` and ``layout.matrix_axes(params)`` are trees
    like ``params`` of ``"muon"`` / ``"adamw"`` and of
    :class:`optax_muon.MatrixAxes` (``None`` for AdamW leaves) -- exactly
    what the optimizer uses;
  * ``layout.fallbacks`` maps the leaves that got the name-based default to
    the reason; ``om.describe(params, layout=layout)`` prints everything.

  Changing it: ``layout.replace(path, label=..., fan_in=..., fan_out=...)``
  returns a new ``Layout`` with that leaf overridden.

  Attributes:
    leaves: ``(path, LeafLayout)`` pairs sorted by path.
  """

  leaves: tuple[tuple[str, LeafLayout], ...]

  def __getitem__(self, path: str | tuple[Any, ...]) -> LeafLayout:
    key = path if isinstance(path, str) else _matrix.path_str(path)
    if key in self._table:
      return self._table[key]
    raise KeyError(
        f"the layout has no leaf {key!r}; its leaves are "
        f"{[p for p, _ in self.leaves][:8]}...")

  def __contains__(self, path: object) -> bool:
    return path in self._table

  def __iter__(self) -> Iterator[str]:
    return (p for p, _ in self.leaves)

  def __len__(self) -> int:
    return len(self.leaves)

  def items(self) -> tuple[tuple[str, LeafLayout], ...]:
    """``(path, LeafLayout)`` pairs, sorted by path."""
    return self.leaves

  @property
  def fallbacks(self) -> dict[str, str]:
    """``path -> reason`` for the leaves that got the name-based default."""
    return {p: leaf.reason for p, leaf in self.leaves
            if leaf.reason is not None}

  @functools.cached_property
  def _table(self) -> dict[str, LeafLayout]:
    return dict(self.leaves)

  def _leaf(self, path, leaf) -> LeafLayout:
    key = _matrix.path_str(path)
    table = self._table
    if key not in table:
      raise ValueError(
          f"the layout has no leaf {key!r} (shape "
          f"{tuple(getattr(leaf, 'shape', ()))}): it was inferred from other "
          "params. Call om.infer_layout with the params you optimise.")
    entry = table[key]
    shape = tuple(getattr(leaf, "shape", ()))
    if _is_array(leaf) and shape != entry.shape:
      raise ValueError(
          f"the leaf {key!r} has shape {shape} but the layout was inferred for "
          f"shape {entry.shape}: call om.infer_layout with these params.")
    return entry

  def labels(self, params: Any) -> Any:
    """A tree like ``params`` of ``"muon"`` / ``"adamw"`` labels.

    Raises:
      ValueError: naming a leaf the layout does not have, or whose shape
        differs from the one it was inferred for.
    """
    return jax.tree_util.tree_map_with_path(
        lambda p, x: self._leaf(p, x).label, params)

  def matrix_axes(self, params: Any) -> Any:
    """A tree like ``params`` of :class:`optax_muon.MatrixAxes` for Muon
    leaves and ``None`` for the others."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: self._leaf(p, x).matrix_axes, params)

  def spec(self, path: tuple[Any, ...], leaf: Any) -> _matrix.MatrixAxes | None:
    """The ``matrix_axes`` function ``(path, leaf) -> MatrixAxes or None``
    the optimizers use."""
    return self._leaf(path, leaf).matrix_axes

  def replace(self, path: str | tuple[Any, ...], *, label: str | None = None,
              fan_in: int | Sequence[int] | None = None,
              fan_out: int | Sequence[int] | None = None) -> Layout:
    """A new ``Layout`` with the leaf at ``path`` overridden.

    ``label="adamw"`` routes it to AdamW; ``label="muon"`` (or only new
    axes) makes it a Muon matrix with ``fan_in`` and ``fan_out`` (as given,
    else as they were); every other axis is a batch axis. Its evidence
    becomes ``"replace"``.

    Example: ``layout.replace("head/kernel", label="muon", fan_in=0,
    fan_out=1)``.

    Raises:
      ValueError: for an unknown path or label, and for axes that do not fit
        the leaf (out of range, repeated, or an empty side).
    """
    key = path if isinstance(path, str) else _matrix.path_str(path)
    if key not in self:
      raise ValueError(
          f"Layout.replace got the path {key!r}, which the layout does not "
          f"have; its paths are {list(self)[:8]}...")
    old = self[key]
    if label is None:
      label = (_labels.MUON if fan_in is not None or fan_out is not None
               else old.label)
    if label not in _labels.LABELS:
      raise ValueError(
          f"Layout.replace got label={label!r} for {key!r}: use 'muon' or "
          "'adamw'.")
    if label == _labels.ADAMW:
      if fan_in is not None or fan_out is not None:
        raise ValueError(
            f"Layout.replace got fan_in/fan_out with label='adamw' for "
            f"{key!r}: AdamW leaves have no matrix axes.")
      new = LeafLayout(old.shape, label, evidence="replace")
    else:
      ndim = len(old.shape)
      fi = _axes_arg(old.fan_in if fan_in is None else fan_in, ndim, key,
                     "fan_in")
      fo = _axes_arg(old.fan_out if fan_out is None else fan_out, ndim, key,
                     "fan_out")
      if set(fi) & set(fo):
        raise ValueError(
            f"Layout.replace got fan_in={fi} and fan_out={fo} for {key!r}: "
            "they share an axis.")
      batch = tuple(a for a in range(ndim) if a not in fi + fo)
      new = LeafLayout(old.shape, label, fi, fo, batch, evidence="replace")
    return Layout(tuple((p, new if p == key else leaf)
                        for p, leaf in self.leaves))


def _axes_arg(axes, ndim: int, key: str, what: str) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
  if not axes or any(
      not isinstance(a, (int, np.integer)) or isinstance(a, bool)
      or not -ndim <= a < ndim for a in axes):
    raise ValueError(
        f"Layout.replace got {what}={axes!r} for {key!r} ({ndim} dims): give "
        f"one or more axis indices in [-{ndim}, {ndim}).")
  out = tuple(sorted(int(a) % ndim for a in axes))
  if len(set(out)) != len(out):
    raise ValueError(
        f"Layout.replace got {what}={axes!r} for {key!r}: an axis repeats.")
  return out


def check_exclusive(layout: Layout | None, who: str, **others: Any) -> None:
  """Raises ``ValueError`` when ``layout`` comes with any of ``others``."""
  if layout is None:
    return
  if not isinstance(layout, Layout):
    raise ValueError(
        f"{who} got layout={layout!r}: pass the om.Layout that "
        "om.infer_layout(fn, params, *args) returns.")
  given = sorted(name for name, value in others.items() if value is not None)
  if given:
    raise ValueError(
        f"{who} got layout= together with {', '.join(given)}: a Layout "
        "already says every leaf's label and matrix axes. Pass only layout= "
        "(override single leaves with layout.replace(path, ...)), or only "
        f"{', '.join(given)}.")


# ---------------------------------------------------------- the tracing ----


def _is_array(x: Any) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


class _View(NamedTuple):
  """A value that is a param leaf up to shape ops and casts: for each of its
  dimensions, the leaf axes it holds (``()`` for a new axis)."""
  leaf: int
  dims: tuple[tuple[int, ...], ...]


class _Act(NamedTuple):
  """A value computed from inputs (or from params by a consuming op):
  ``heads`` are the leaves whose product with activations reaches it with no
  further weight product; ``parts`` (empty, or one entry per dimension) says
  which dimensions are still one whole free axis ``(leaf, axis)`` of the
  product that made it (else ``None``), so that taking such a dimension
  apart (Gemma's ``k, v = kv_einsum(...)``) makes that axis a batch axis."""
  heads: frozenset[int]
  parts: tuple[tuple[int, int] | None, ...] = ()


_CONST = None  # a value that depends on nothing traced


class _Use(NamedTuple):
  kind: str  # "matmul", "gather", "elementwise", "opaque"
  where: str  # "dot_general at file.py:12 (fn)"
  fan_in: tuple[int, ...] = ()
  fan_out: tuple[int, ...] = ()
  batch: tuple[int, ...] = ()
  note: str = ""


def _source(eqn) -> str:
  """``"dot_general at dir/file.py:12 (fn)"``: the primitive and the user
  frame that made it."""
  # JAX keeps the summariser in a private module that may move between
  # versions: looked up by name, and without it the evidence has no line.
  try:
    info = importlib.import_module("jax._src.source_info_util")
    text = info.summarize(eqn.source_info)
  except Exception:  # noqa: BLE001
    text = ""
  head, sep, tail = text.partition(" ")
  parts = head.replace("\\", "/").split("/")
  if len(parts) > 2:
    text = "/".join(parts[-2:]) + sep + tail
  name = eqn.primitive.name
  return f"{name} at {text}" if text else name


def _is_literal(v) -> bool:
  return type(v).__name__ == "Literal"


def _jaxpr_parts(j):
  """``(open jaxpr, consts)`` of a ``Jaxpr`` or ``ClosedJaxpr``."""
  if hasattr(j, "jaxpr") and hasattr(j, "consts"):
    return j.jaxpr, j.consts
  return j, ()


def _is_jaxpr(x) -> bool:
  inner, _ = _jaxpr_parts(x)
  return hasattr(inner, "eqns") and hasattr(inner, "invars")


_SHAPE_IDENTITY = frozenset((
    "convert_element_type", "copy", "copy_p", "reduce_precision", "slice",
    "dynamic_slice", "rev", "sharding_constraint", "pvary", "device_put",
    "optimization_barrier", "pad", "split", "mesh_cast", "reshard",
    "stop_gradient"))
_REDUCTIONS = frozenset((
    "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin",
    "cumlogsumexp", "sort", "top_k"))


def _merge(a, b):
  if a == b:
    return a
  heads = frozenset()
  for x in (a, b):
    if isinstance(x, _Act):
      heads |= x.heads
  return _Act(heads)


def _union_heads(infos) -> Any:
  heads, any_traced = frozenset(), False
  for x in infos:
    if isinstance(x, _Act):
      heads |= x.heads
      any_traced = True
    elif isinstance(x, _View):
      any_traced = True
  return _Act(heads) if any_traced else _CONST


def _scan_counts(params) -> tuple[int, int]:
  """``(consts, carries)`` of a ``scan`` equation: ``num_consts`` /
  ``num_carry`` up to JAX 0.11, the lengths of the first two groups of
  ``ft_in`` (consts, carry, xs) in JAX 0.12."""
  if "num_consts" in params:
    return params["num_consts"], params["num_carry"]
  groups = params["ft_in"]
  groups = groups.unpack() if hasattr(groups, "unpack") else groups
  return len(groups[0]), len(groups[1])


def _own_axis(view: _View, k: int) -> tuple[int, int] | None:
  """``(leaf, axis)`` if dimension ``k`` of the view is one whole leaf axis
  that no other dimension holds."""
  axes = view.dims[k]
  if len(axes) != 1 or sum(axes[0] in d for d in view.dims) != 1:
    return None
  return view.leaf, axes[0]


def _with_parts(info, parts):
  if isinstance(info, _Act) and parts and any(p is not None for p in parts):
    return _Act(info.heads, tuple(parts))
  return info


def _elementwise_parts(eqn, ins):
  """The parts of an elementwise op's output: those of its full-size
  operands, where they agree."""
  shape = tuple(eqn.outvars[0].aval.shape)
  out: list[Any] = [None] * len(shape)
  seen = [False] * len(shape)
  for v, x in zip(eqn.invars, ins):
    if not (isinstance(x, _Act) and x.parts):
      continue
    s = tuple(v.aval.shape)
    for d, p in enumerate(x.parts):
      if s[d] != shape[d]:
        continue
      if seen[d] and out[d] != p:
        out[d] = None
      elif not seen[d]:
        out[d], seen[d] = p, True
  return tuple(out)


def _reshape_dims(in_shape, out_shape, dims):
  """The leaf axes of each output dim of a reshape, or ``None`` where axes
  are mixed (neither a split of one axis nor a merge of several)."""
  if 0 in in_shape or 0 in out_shape:
    return None
  out, i, j = [], 0, 0
  n_in, n_out = len(in_shape), len(out_shape)
  while i < n_in or j < n_out:
    if i < n_in and in_shape[i] == 1:
      i += 1
      continue
    if j < n_out and out_shape[j] == 1:
      out.append(())
      j += 1
      continue
    gi, gj = [i], [j]
    pi, pj = in_shape[i], out_shape[j]
    i, j = i + 1, j + 1
    while pi != pj:
      if pi < pj:
        gi.append(i)
        pi *= in_shape[i]
        i += 1
      else:
        gj.append(j)
        pj *= out_shape[j]
        j += 1
    big_in = [k for k in gi if in_shape[k] != 1]
    big_out = [k for k in gj if out_shape[k] != 1]
    if len(big_in) > 1 and len(big_out) > 1:
      return None
    axes = tuple(sorted({a for k in gi for a in dims[k]}))
    out.extend(axes if out_shape[k] != 1 else () for k in gj)
  return tuple(out)


class _Tracer:
  """Interprets a jaxpr on :class:`_View` / :class:`_Act` values, recording
  every consumption of a param leaf."""

  def __init__(self, n_leaves: int):
    self.uses: list[list[_Use]] = [[] for _ in range(n_leaves)]

  def use(self, view: _View, use: _Use) -> None:
    self.uses[view.leaf].append(use)

  def opaque(self, infos, where: str, note: str) -> None:
    for x in infos:
      if isinstance(x, _View):
        self.use(x, _Use("opaque", where, note=note))

  # -- jaxprs --------------------------------------------------------------

  def run(self, jaxpr, in_infos):
    inner, _ = _jaxpr_parts(jaxpr)
    env = {v: _CONST for v in inner.constvars}
    env.update(zip(inner.invars, in_infos))

    def read(v):
      return _CONST if _is_literal(v) else env.get(v, _CONST)

    for eqn in inner.eqns:
      outs = self.eqn(eqn, [read(v) for v in eqn.invars])
      env.update(zip(eqn.outvars, outs))
    return [read(v) for v in inner.outvars]

  def quiet_run(self, jaxpr, in_infos):
    """:meth:`run` without recording uses (loop fixed-point iterations)."""
    saved = self.uses
    self.uses = [[] for _ in saved]
    try:
      return self.run(jaxpr, in_infos)
    finally:
      self.uses = saved

  def loop(self, body, fixed, carry, rest):
    """Runs ``body(fixed + carry + rest)`` until the carries' infos settle;
    returns the last outputs and the settled carries.

    A carry is the body's output from the second iteration on, so its heads
    are those of the body's output (a residual stream keeps the initial
    value's through the body itself). A param carried and changed by the
    loop cannot be followed.
    """
    n = len(carry)
    settled = list(carry)
    for _ in range(4):
      out = self.quiet_run(body, list(fixed) + settled + list(rest))
      new = [c if o == c else _Act(
          o.heads if isinstance(o, _Act) else frozenset())
             for c, o in zip(carry, out[:n])]
      if new == settled:
        break
      settled = new
    for c, s in zip(carry, settled):
      if isinstance(c, _View) and s != c:
        self.use(c, _Use("opaque", "loop carry",
                         note="carried through a loop that changes it"))
    out = self.run(body, list(fixed) + settled + list(rest))
    return out, settled

  # -- one equation ----------------------------------------------------------

  def eqn(self, eqn, ins):
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    views = [x for x in ins if isinstance(x, _View)]
    parts = any(isinstance(x, _Act) and x.parts for x in ins)
    if not views and not parts:
      return [_union_heads(ins)] * n_out
    if not views:
      return self.parts_eqn(eqn, ins)
    where = _source(eqn)
    params = eqn.params
    if name == "dot_general":
      return [self.dot_general(eqn, ins, where)]
    if name == "conv_general_dilated":
      return [self.conv(eqn, ins, where)]
    if name == "gather":
      for x in views:
        if x is ins[0]:
          self.use(x, _Use("gather", where))
        else:
          self.use(x, _Use("opaque", where, note="used as gather indices"))
      return [_union_heads(ins[1:]) if len(ins) > 1 else _Act(frozenset())]
    out = self.nested(eqn, ins)
    if out is not None:
      return out
    x = ins[0]
    if name in _SHAPE_IDENTITY and isinstance(x, _View):
      # dynamic_slice's other operands are its start indices, traced or
      # not: the axes are still followed. pad's is the padding value.
      if len(views) > 1 or name != "dynamic_slice" and any(
          isinstance(y, _Act) for y in ins[1:]):
        self.opaque(ins, where, f"combined with other values by {name}")
        return [_union_heads(ins)] * n_out
      return [x] * n_out
    if name == "dynamic_update_slice":
      if isinstance(x, _View) and not isinstance(ins[1], _View):
        return [x]
      self.opaque(ins, where, "written into another array")
      return [_union_heads(ins)]
    if name == "transpose" and isinstance(x, _View):
      return [_View(x.leaf, tuple(x.dims[p] for p in params["permutation"]))]
    if name == "squeeze" and isinstance(x, _View):
      drop = {d % len(x.dims) for d in params["dimensions"]}
      return [_View(x.leaf, tuple(d for k, d in enumerate(x.dims)
                                  if k not in drop))]
    if name == "broadcast_in_dim" and isinstance(x, _View) and len(ins) == 1:
      dims = [()] * len(params["shape"])
      for k, d in enumerate(params["broadcast_dimensions"]):
        dims[d] = x.dims[k]
      return [_View(x.leaf, tuple(dims))]
    if name == "reshape" and isinstance(x, _View) and len(ins) == 1:
      dims = _reshape_dims(tuple(eqn.invars[0].aval.shape),
                           tuple(params["new_sizes"]), x.dims)
      if dims is None:
        self.opaque(
            ins, where,
            f"reshaped {tuple(eqn.invars[0].aval.shape)} -> "
            f"{tuple(params['new_sizes'])}, which mixes its axes")
        return [_Act(frozenset())]
      return [_View(x.leaf, dims)]
    if self.elementwise(eqn):
      if len(views) == 1 and not any(isinstance(y, _Act) for y in ins):
        return [views[0]]
      if len(views) > 1:
        self.opaque(ins, where, f"combined with another param by {name}")
      else:
        for v in views:
          self.use(v, _Use("elementwise", where))
      return [_with_parts(_union_heads(ins), _elementwise_parts(eqn, ins))]
    if name.startswith("reduce_") or name in _REDUCTIONS:
      for v in views:
        self.use(v, _Use("elementwise", where))
      return [_union_heads(ins)] * n_out
    self.opaque(ins, where, f"consumed by {name}, which is not followed")
    return [_union_heads(ins)] * n_out

  def nested(self, eqn, ins):
    """Follows an equation with sub-jaxprs (``scan``, ``while``, ``cond``,
    ``pjit``, ``remat``, custom derivatives) into them; ``None`` for any
    other equation."""
    name = eqn.primitive.name
    if name == "scan":
      return self.scan(eqn, ins)
    if name == "while":
      return self.while_loop(eqn, ins)
    if name == "cond":
      return self.cond(eqn, ins)
    sub = self.sub_jaxpr(eqn)
    return None if sub is None else self.run(sub, ins)

  def parts_eqn(self, eqn, ins):
    """An equation on activations only, some of whose dimensions are whole
    free axes of a weight: follows those dimensions, and records a weight
    axis whose dimension is taken apart (indexed element by element)."""
    name, params = eqn.primitive.name, eqn.params
    n_out = len(eqn.outvars)
    out = self.nested(eqn, ins)
    if out is not None:
      return out
    x, heads = ins[0], _union_heads(ins)
    if not isinstance(x, _Act) or not x.parts:
      if self.elementwise(eqn):
        return [_with_parts(heads, _elementwise_parts(eqn, ins))]
      return [heads] * n_out
    in_shape = tuple(eqn.invars[0].aval.shape)
    if name in ("slice", "dynamic_slice", "split", "unstack"):
      outs = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
      axes = ([params["axis"]] if name in ("split", "unstack")
              else range(len(in_shape)))
      for d in axes:
        taken = x.parts[d] is not None and in_shape[d] > 1 and (
            name == "unstack" or all(o[d] == 1 for o in outs))
        if taken:
          leaf, axis = x.parts[d]
          self.uses[leaf].append(_Use("apart", _source(eqn), batch=(axis,)))
      if name == "unstack":
        d = params["axis"]
        return [_with_parts(heads, x.parts[:d] + x.parts[d + 1:])] * n_out
      return [_with_parts(heads, tuple(
          p if o[d] == in_shape[d] else None for d, p in enumerate(x.parts)))
              for o in outs]
    if name in _SHAPE_IDENTITY:
      return [_with_parts(heads, x.parts)] * n_out
    if name == "transpose":
      return [_with_parts(heads, tuple(x.parts[p]
                                       for p in params["permutation"]))]
    if name == "squeeze":
      drop = {d % len(x.parts) for d in params["dimensions"]}
      return [_with_parts(heads, tuple(p for d, p in enumerate(x.parts)
                                       if d not in drop))]
    if name == "broadcast_in_dim" and len(ins) == 1:
      out = [None] * len(params["shape"])
      for k, d in enumerate(params["broadcast_dimensions"]):
        if in_shape[k] == params["shape"][d]:
          out[d] = x.parts[k]
      return [_with_parts(heads, tuple(out))]
    if name == "reshape" and len(ins) == 1:
      new = tuple(params["new_sizes"])
      dims = _reshape_dims(in_shape, new,
                           tuple((k,) for k in range(len(in_shape))))
      if dims is None:
        return [heads]
      out = []
      for j, ks in enumerate(dims):
        whole = len(ks) == 1 and in_shape[ks[0]] == new[j] and sum(
            ks == other for other in dims) == 1
        out.append(x.parts[ks[0]] if whole else None)
      return [_with_parts(heads, tuple(out))]
    if self.elementwise(eqn):
      return [_with_parts(heads, _elementwise_parts(eqn, ins))]
    return [heads] * n_out

  @staticmethod
  def elementwise(eqn) -> bool:
    """One output, every input a scalar or of the output's rank with each
    dimension equal to the output's or 1 (lax's implicit broadcast)."""
    if len(eqn.outvars) != 1:
      return False
    shape = tuple(getattr(eqn.outvars[0].aval, "shape", ()))
    for v in eqn.invars:
      s = tuple(getattr(v.aval, "shape", ()))
      if s and (len(s) != len(shape)
                or any(a not in (b, 1) for a, b in zip(s, shape))):
        return False
    return True

  @staticmethod
  def sub_jaxpr(eqn):
    """The one sub-jaxpr of a call-like primitive (``jit``, ``remat``,
    ``custom_jvp_call``, ``custom_vjp_call``, ``closed_call``, ...) whose
    inputs and outputs are the equation's, or ``None``."""
    found = None
    for value in eqn.params.values():
      if _is_jaxpr(value):
        inner, _ = _jaxpr_parts(value)
        if (len(inner.invars) == len(eqn.invars)
            and len(inner.outvars) == len(eqn.outvars)):
          if found is not None:
            return None
          found = value
    return found

  # -- consumers -------------------------------------------------------------

  def matmul_use(self, view: _View, contract, batch, where: str) -> None:
    free = [k for k in range(len(view.dims)) if k not in contract + batch]
    fi = {a for k in contract for a in view.dims[k]}
    fo = {a for k in free for a in view.dims[k]}
    ba = {a for k in batch for a in view.dims[k]}
    if fi & fo or fi & ba or fo & ba:
      self.use(view, _Use(
          "opaque", where, note=(
              "a reshape splits one of its axes between the fan-in, fan-out "
              "or batch of the product")))
      return
    self.use(view, _Use("matmul", where, tuple(sorted(fi)), tuple(sorted(fo)),
                        tuple(sorted(ba))))

  def dot_general(self, eqn, ins, where):
    lhs, rhs = ins[0], ins[1]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if isinstance(lhs, _View) and isinstance(rhs, _View):
      self.opaque(ins, where, "multiplied by another param")
      return _Act(frozenset())
    n_lhs = len(eqn.invars[0].aval.shape)
    n_rhs = len(eqn.invars[1].aval.shape)
    lhs_free = [k for k in range(n_lhs) if k not in tuple(lc) + tuple(lb)]
    rhs_free = [k for k in range(n_rhs) if k not in tuple(rc) + tuple(rb)]
    # dot_general's output: batch dims, then lhs free, then rhs free.
    if isinstance(lhs, _View):
      self.matmul_use(lhs, tuple(lc), tuple(lb), where)
      own = [_own_axis(lhs, k) for k in lhs_free]
      parts = (None,) * len(lb) + tuple(own) + (None,) * len(rhs_free)
      return _Act(frozenset((lhs.leaf,)), parts)
    self.matmul_use(rhs, tuple(rc), tuple(rb), where)
    own = [_own_axis(rhs, k) for k in rhs_free]
    parts = (None,) * (len(lb) + len(lhs_free)) + tuple(own)
    return _Act(frozenset((rhs.leaf,)), parts)

  def conv(self, eqn, ins, where):
    lhs, rhs = ins[0], ins[1]
    if isinstance(lhs, _View) or not isinstance(rhs, _View):
      self.opaque(ins, where, "used as a convolution's input")
      return _Act(frozenset())
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
    self.matmul_use(rhs, tuple(spec[1:]), (), where)
    return _Act(frozenset((rhs.leaf,)))

  def scan(self, eqn, ins):
    p = eqn.params
    nc, nk = _scan_counts(p)
    consts, carry, xs = ins[:nc], ins[nc:nc + nk], ins[nc + nk:]
    # The scanned-over axis is gone inside the body: its leaf axes are then
    # in no dimension, which makes them batch axes of any product.
    xs_in = [_View(x.leaf, x.dims[1:]) if isinstance(x, _View) else x
             for x in xs]
    out, settled = self.loop(p["jaxpr"], consts, carry, xs_in)
    ys = [_View(y.leaf, ((),) + y.dims) if isinstance(y, _View) else y
          for y in out[nk:]]
    return list(settled) + ys

  def while_loop(self, eqn, ins):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cconsts, bconsts, carry = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
    _, settled = self.loop(p["body_jaxpr"], bconsts, carry, ())
    self.run(p["cond_jaxpr"], list(cconsts) + list(settled))
    return list(settled)

  def cond(self, eqn, ins):
    ops = ins[1:]
    outs = None
    for branch in eqn.params["branches"]:
      res = self.run(branch, ops)
      outs = res if outs is None else [_merge(a, b) for a, b in zip(outs, res)]
    return outs


# -------------------------------------------------------------- deciding ----


def _decide(shape, uses: list[_Use], is_head: bool):
  """``LeafLayout`` fields from a leaf's uses, or ``(None, reason)`` for the
  name-based default."""
  if not shape:
    return LeafLayout(shape, _labels.ADAMW, evidence="scalar"), None
  if not uses:
    return None, "not used by the function"
  apart = {a for u in uses if u.kind == "apart" for a in u.batch}
  uses = [u for u in uses if u.kind != "apart"]
  if not uses:
    return None, "not used by the function"
  opaque = [u for u in uses if u.kind == "opaque"]
  if opaque:
    return None, f"{opaque[0].note} ({opaque[0].where})"
  matmuls = [u for u in uses if u.kind == "matmul"]
  gathers = [u for u in uses if u.kind == "gather"]
  others = [u for u in uses if u.kind == "elementwise"]
  if not matmuls:
    first = (gathers or others)[0]
    return LeafLayout(shape, _labels.ADAMW, evidence=first.where), None
  signatures = {(u.fan_in, u.fan_out, u.batch) for u in matmuls}
  if len(signatures) > 1:
    a, b = sorted(signatures)[:2]
    ua = next(u for u in matmuls if (u.fan_in, u.fan_out, u.batch) == a)
    ub = next(u for u in matmuls if (u.fan_in, u.fan_out, u.batch) == b)
    return None, (
        f"products disagree: {ua.where} contracts axes {a[0]} (free {a[1]}), "
        f"{ub.where} contracts {b[0]} (free {b[1]})")
  first = matmuls[0]
  if gathers:
    return LeafLayout(shape, _labels.ADAMW, evidence=(
        f"{gathers[0].where} and {first.where} (tied embedding and head)")
    ), None
  if is_head:
    return LeafLayout(shape, _labels.ADAMW, evidence=(
        f"{first.where}, whose product is the output (head)")), None
  if others:
    return None, (
        f"used both in a product ({first.where}) and elementwise "
        f"({others[0].where})")
  fi, fo, _ = signatures.pop()
  if apart & set(fo) and set(fo) - apart:
    # A free axis of its own that the code takes apart right after the
    # product (k and v of Gemma's kv_einsum): separate matrices.
    fo = tuple(a for a in fo if a not in apart)
  if not fi or not fo:
    return LeafLayout(shape, _labels.ADAMW, evidence=(
        f"{first.where} (a vector: no {'fan-in' if not fi else 'fan-out'} "
        "axis)")), None
  batch = tuple(a for a in range(len(shape)) if a not in fi + fo)
  return LeafLayout(shape, _labels.MUON, fi, fo, batch,
                    evidence=first.where), None


def _name_default(path, leaf, label: str, reason: str) -> LeafLayout:
  shape = tuple(leaf.shape)
  if label == _labels.MUON:
    view = _matrix.try_matrix_view(path, leaf)
    if view is not None:
      return LeafLayout(shape, label, view.fan_in_axes, view.fan_out_axes,
                        view.batch_axes, evidence="names", reason=reason)
  return LeafLayout(shape, _labels.ADAMW, evidence="names", reason=reason)


def infer_layout(fn: Callable[..., Any], params: Any, *args: Any,
                 **kwargs: Any) -> Layout:
  """Reads every param leaf's label and matrix axes from ``fn``'s jaxpr.

  Traces ``fn(params, *args, **kwargs)`` abstractly (``jax.make_jaxpr`` on
  shapes and dtypes: no FLOPs run, no activation is allocated) and follows
  each leaf of ``params`` through ``jit``, ``scan`` (its scanned-over axis
  is a batch axis), ``vmap`` (its batch dims are ``dot_general`` batch
  dims), ``remat``, ``custom_jvp`` / ``custom_vjp``, ``cond`` branches,
  ``while`` bodies, reshapes (splits and merges of axes), transposes,
  broadcasts, casts, squeezes and slices, to the primitives that consume
  it. For a product ``x W`` written as ``dot_general`` with contracted axes
  ``C``, batch axes ``B`` and the weight's free axes ``F``, the leaf is the
  stack (over ``B``) of ``(prod C, prod F)`` matrices -- fan-in ``C``,
  fan-out ``F``; a convolution kernel's input-feature and spatial axes are
  its fan-in and its output-feature axis its fan-out.

  The decision per leaf (the module docstring has the details):

  * ``"muon"``: multiplied with activations, every product agreeing on the
    axes, none of its products reaching the output without a further
    weight product (a free axis of the weight that the code indexes apart
    right after the product, like Gemma's ``kv_einsum`` ``C``, is a batch
    axis);
  * ``"adamw"``: the head (its product reaches the output), a table that is
    gathered (also when it is multiplied too: a tied embedding), a leaf used
    only elementwise or reduced (norm scales, biases), a scalar, a vector
    (a product leaves it no fan-out);
  * the name-based default (:func:`optax_muon.muon_labels`, the default
    :func:`optax_muon.matrix_view`), with ``reason`` set: consumers that
    disagree, a product and an elementwise use of one leaf, a reshape that
    mixes its axes or splits one between roles, a primitive that is not
    followed (e.g. ``concatenate``), a leaf multiplied by another param, or
    one the function never uses.

  Non-array leaves of ``args`` / ``kwargs`` (and of ``params``) are closed
  over as static values; ``params`` may hold ``None`` leaves
  (``eqx.filter(model, eqx.is_array)``) and any registered pytree node.

  Example:
    >>> import jax, jax.numpy as jnp, optax_muon as om
    >>> params = {"emb": jnp.zeros((10, 4)), "w": jnp.zeros((8, 4)),
    ...           "head": jnp.zeros((4, 10))}
    >>> def forward(p, tokens):
    ...   x = p["emb"][tokens]                  # a lookup
    ...   x = jax.nn.relu(x @ p["w"].T)          # w is (out, in)
    ...   return x[..., :4] @ p["head"]
    >>> layout = om.infer_layout(forward, params, jnp.zeros(3, jnp.int32))
    >>> layout["w"].label, layout["w"].fan_in, layout["w"].fan_out
    ('muon', (1,), (0,))
    >>> layout.labels(params)
    {'emb': 'adamw', 'head': 'adamw', 'w': 'muon'}
    >>> tx = om.muon(0.02, layout=layout)

  Args:
    fn: the model's forward function, ``fn(params, *args, **kwargs)`` ->
      its output (logits, predictions). Pure and traceable; its output
      decides which product is the head, so return the model's output, not
      a loss.
    params: the trainable params exactly as given to the optimizer.
    *args: example inputs (their shapes and dtypes are what matters).
    **kwargs: more example inputs.

  Returns:
    A :class:`Layout` with one entry per array leaf of ``params``.

  Raises:
    ValueError: when two leaves print as the same path, or when tracing
      ``fn`` fails (the error says so and chains the original).
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [_matrix.path_str(p) for p, _ in flat]
  if len(set(paths)) != len(paths):
    dup = sorted({p for p in paths if paths.count(p) > 1})
    raise ValueError(
        f"infer_layout: several leaves of the params print as the same path "
        f"{dup[:3]}; a Layout is keyed by these paths.")
  arrays = [k for k, (_, x) in enumerate(flat) if _is_array(x)]
  a_flat, a_def = jax.tree_util.tree_flatten((args, kwargs))
  a_arrays = [k for k, x in enumerate(a_flat) if _is_array(x)]

  def traced(param_leaves, arg_leaves):
    leaves = [x for _, x in flat]
    for k, x in zip(arrays, param_leaves):
      leaves[k] = x
    a_leaves = list(a_flat)
    for k, x in zip(a_arrays, arg_leaves):
      a_leaves[k] = x
    p = jax.tree_util.tree_unflatten(treedef, leaves)
    a, kw = jax.tree_util.tree_unflatten(a_def, a_leaves)
    return fn(p, *a, **kw)

  def spec(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)

  try:
    closed = jax.make_jaxpr(traced)(
        [spec(flat[k][1]) for k in arrays],
        [spec(a_flat[k]) for k in a_arrays])
  except Exception as e:
    raise ValueError(
        f"infer_layout could not trace fn(params, *args, **kwargs): "
        f"{type(e).__name__}: {e}. Pass the model's pure forward function "
        "and example inputs (see the README's recipes).") from e

  tracer = _Tracer(len(arrays))
  jaxpr = closed.jaxpr
  in_infos = [_View(i, tuple((a,) for a in range(len(flat[k][1].shape))))
              for i, k in enumerate(arrays)]
  in_infos += [_Act(frozenset())] * (len(jaxpr.invars) - len(in_infos))
  outs = tracer.run(closed, in_infos)
  heads: set[int] = set()
  for o in outs:
    if isinstance(o, _Act):
      heads |= o.heads
    elif isinstance(o, _View):
      tracer.use(o, _Use("elementwise", "the output"))

  entries: dict[int, LeafLayout] = {}
  pending: dict[int, str] = {}
  for i, k in enumerate(arrays):
    shape = tuple(flat[k][1].shape)
    entry, reason = _decide(shape, tracer.uses[i], i in heads)
    if entry is None:
      pending[k] = reason
    else:
      entries[k] = entry
  if pending:
    names = treedef.flatten_up_to(_labels.default_labels(params)[0])
    for k, reason in pending.items():
      path, leaf = flat[k]
      entries[k] = _name_default(path, leaf, names[k], reason)
  out = []
  for k, (_, leaf) in enumerate(flat):
    if k in entries:
      out.append((paths[k], entries[k]))
    else:
      out.append((paths[k], LeafLayout(
          tuple(getattr(leaf, "shape", ())), _labels.ADAMW,
          evidence="not an array")))
  return Layout(tuple(sorted(out, key=lambda e: e[0])))

