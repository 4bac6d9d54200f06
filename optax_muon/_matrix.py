"""The matrix view of a parameter leaf, and the shape scale.

A leaf in the Flax layout is seen as a stack of ``(fan_in, fan_out)``
matrices: a dense kernel as it is, an n-D kernel with every axis but the last
as fan-in (a conv kernel ``(H, W, C_in, C_out)`` as ``(H*W*C_in, C_out)``),
Flax attention's q/k/v kernels ``(in, heads, head_dim)`` as ``(in,
heads*head_dim)``, and user-declared batch axes (stacked or scanned layers)
as a batch of such matrices. The layouts of other well-known libraries are
read from the names they give their weights (:func:`default_axes`: HF-Flax
GPT-2's ``FlaxConv1D``, Equinox's and Haliax's ``weight (out, in)``, Gemma's
einsums, MaxText's expert stacks). Any other layout is stated per leaf with
:class:`MatrixAxes` (or ``optax.contrib.MuonDimensionNumbers``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

KeyPath = tuple[Any, ...]
#: ``batch_axes(path, leaf) -> axes``: which axes of a leaf index separate
#: matrices (e.g. ``(0,)`` for the layer axis of ``nnx.scan``-ned layers).
BatchAxesFn = Callable[[KeyPath, Any], int | Sequence[int] | None]
#: ``None``, axes shared by every leaf, a :data:`BatchAxesFn`, or a tree like
#: the params with ``None`` or axes at its leaves.
BatchAxes = Union[None, int, Sequence[int], BatchAxesFn, Any]

SHAPE_SCALES = ("spectral", "rms", "none")


def stacked(*names: str, axis: int | Sequence[int] = 0) -> BatchAxesFn:
  """A ``batch_axes`` function for stacked (scanned) layers.

  Leaves whose key path contains one of ``names`` get ``axis`` as batch
  axes; all others none. This is the one-liner for a model whose blocks are
  built with ``nnx.vmap`` (applied with ``nnx.scan``) or ``linen.scan``
  under an attribute such as ``layers``: biases and norm scales of the stack
  still go to AdamW, and matrices outside it (a final projection) keep their
  full view.

  Example: ``om.muon(0.02, batch_axes=om.stacked("layers"))``; MaxText,
  which scans its layers at ``param_scan_axis=1``, needs
  ``om.stacked("layers", axis=1)``. The stacked-layers warning of the
  aliases names the sub-tree and the axis it found.

  Args:
    names: path entries that mark the stacked sub-trees.
    axis: the stacking axis (or axes) of their leaves.
  """
  if not names or not all(isinstance(n, str) for n in names):
    raise ValueError(
        f"stacked needs the names of the stacked sub-trees as strings, got "
        f"{names!r}: e.g. om.stacked('layers').")
  names_set = frozenset(names)

  def batch_axes(path, leaf):
    del leaf
    return axis if names_set & {key_name(k) for k in path} else None
  return batch_axes


def is_function(x: Any) -> bool:
  """Whether an argument that may be a tree or a function is a function.

  JAX libraries hand trees whose nodes are callable: an ``eqx.Module`` with
  a ``__call__`` (``eqx.nn.MLP``) is a pytree, so a label or axes tree built
  like the params is one too. A callable is taken for a function when it is
  a pytree leaf (a plain function or callable object), a
  ``functools.partial`` (``jax.tree_util.Partial`` included), or a pytree
  node with a callable leaf (``eqx.Partial``); any other pytree node is a
  tree.
  """
  if not callable(x):
    return False
  if isinstance(x, functools.partial):
    return True
  leaves, treedef = jax.tree_util.tree_flatten(x)
  return (jax.tree_util.treedef_is_leaf(treedef)
          or any(callable(leaf) for leaf in leaves))


def _is_axes_value(x: Any) -> bool:
  """``None``, an axis, or a list/tuple of axes: one leaf's ``batch_axes``."""
  if x is None or isinstance(x, (int, np.integer)) and not isinstance(
      x, bool):
    return True
  return isinstance(x, (tuple, list)) and all(
      isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in x)


# Tables of batch-axes trees, by id (the tree is kept so the id stays its).
_BATCH_TABLES: dict[int, tuple[Any, dict[str, Any]]] = {}


def batch_spec(batch_axes: BatchAxes, path: KeyPath, leaf: Any) -> Any:
  """One leaf's ``batch_axes``: the shared axes, the function's answer, or
  the entry at the leaf's path of a tree like the params (any pytree: dicts,
  ``eqx.Module``s, NNX ``State``; ``None`` or axes at its leaves; leaves it
  does not name have none)."""
  if is_function(batch_axes):
    return batch_axes(path, leaf)
  if (_is_axes_value(batch_axes) or isinstance(batch_axes, jax.Array)
      or jax.tree_util.treedef_is_leaf(
          jax.tree_util.tree_structure(batch_axes))):
    return batch_axes  # checked by _normalize_axes
  entry = _BATCH_TABLES.get(id(batch_axes))
  if entry is None or entry[0] is not batch_axes:
    flat, _ = jax.tree_util.tree_flatten_with_path(
        batch_axes, is_leaf=_is_axes_value)
    if len(_BATCH_TABLES) > 64:
      _BATCH_TABLES.clear()
    entry = (batch_axes, {path_str(p): a for p, a in flat})
    _BATCH_TABLES[id(batch_axes)] = entry
  return entry[1].get(path_str(path))


def key_name(key: Any) -> Any:
  """The plain name or index inside one key-path entry."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def is_index(name: Any) -> bool:
  """Whether a path entry is a position (``blocks/0``, HF's ``h/"0"``)."""
  return (isinstance(name, (int, np.integer)) and not isinstance(name, bool)
          or isinstance(name, str) and name.isdigit())


#: Leaf names after which a trailing index is the array inside a named-array
#: node, not a position in a list (see :func:`logical_names`).
_ARRAY_NAMES = frozenset(("weight", "bias", "scale", "kernel", "embedding",
                          "w"))


def logical_names(path: KeyPath) -> list[Any]:
  """The names of a key path, without the entries that name no module.

  Two libraries add an entry below the leaf's own name:

  - ``nnx.Variable`` nodes add a trailing ``value``;
  - Haliax's ``NamedArray`` (haliax ``src/haliax/core.py``,
    ``NamedArray.tree_flatten`` returns ``((self.array,), self.axes)``; read
    at haliax f41e7d4, 2025-09) flattens to one child, so a Haliax
    ``LayerNorm``'s scale is ``ln_1/weight/0``: a trailing index after
    ``weight``, ``bias``, ``scale``, ``kernel``, ``embedding`` or ``w`` is
    dropped.
  """
  names = [key_name(k) for k in path]
  if len(names) > 1 and names[-1] == "value":
    names = names[:-1]
  if len(names) > 1 and is_index(names[-1]) and names[-2] in _ARRAY_NAMES:
    names = names[:-1]
  return names


def last_name(path: KeyPath) -> Any:
  """The leaf's own name: the last key of its path that names something
  (:func:`logical_names`: ``nnx.Variable``'s trailing ``value`` and a
  Haliax ``NamedArray``'s trailing index are not names)."""
  names = logical_names(path)
  return names[-1] if names else None


def path_str(path: KeyPath) -> str:
  """``('layers', 0, 'kernel')``-style key path as ``'layers/0/kernel'``."""
  parts = [str(key_name(k)) for k in path]
  # nnx.Variable nodes add a trailing '.value' entry that names nothing.
  if len(parts) > 1 and parts[-1] == "value":
    parts = parts[:-1]
  return "/".join(parts) if parts else "<root>"


@dataclasses.dataclass(frozen=True)
class MatrixAxes:
  """Which axes of a leaf are its matrix's fan-in and fan-out.

  A leaf ``x`` with ``MatrixAxes(fan_in=a, fan_out=b)`` is seen as a stack of
  ``(prod(shape[a]), prod(shape[b]))`` matrices; every axis in neither is a
  batch axis (an index over separate matrices). Axes may be negative, which
  makes one spec fit a leaf with or without leading stacked-layer axes.
  This is :class:`optax.contrib.MuonDimensionNumbers` under other names
  (``reduction_axis`` is ``fan_in``, ``output_axis`` is ``fan_out``); both
  are accepted wherever a ``matrix_axes`` spec is.

  Example: a Flax attention query kernel ``(in, heads, head_dim)`` as one
  ``(in, heads*head_dim)`` matrix is ``MatrixAxes(-3, (-2, -1))``, and as
  ``heads`` matrices ``(in, head_dim)`` is ``MatrixAxes(-3, -1)``.

  Attributes:
    fan_in: the input (reduction) axis or axes.
    fan_out: the output axis or axes.
  """

  fan_in: int | tuple[int, ...]
  fan_out: int | tuple[int, ...]


def is_axes_spec(x: Any) -> bool:
  """Whether ``x`` is a :class:`MatrixAxes` or an
  ``optax.contrib.MuonDimensionNumbers``."""
  return isinstance(x, MatrixAxes) or (
      isinstance(x, tuple) and hasattr(x, "reduction_axis")
      and hasattr(x, "output_axis"))


def _spec_axes(spec: Any) -> tuple[Any, Any]:
  if isinstance(spec, MatrixAxes):
    return spec.fan_in, spec.fan_out
  return spec.reduction_axis, spec.output_axis


#: ``matrix_axes(path, leaf) -> spec``: a leaf's fan-in/fan-out axes
#: (:class:`MatrixAxes` or ``optax.contrib.MuonDimensionNumbers``), or
#: ``None`` for the default view.
MatrixAxesFn = Callable[[KeyPath, Any], Any]
#: ``None`` (default views), one spec for every leaf, a tree like the params
#: with spec or ``None`` leaves, or a :data:`MatrixAxesFn`.
MatrixAxesArg = Any

#: Owner names of the input projections of Flax's attention
#: (``nnx.MultiHeadAttention``, ``linen.MultiHeadDotProductAttention``):
#: their kernels are ``(in, heads, head_dim)``.
ATTENTION_INPUT_NAMES: tuple[str, ...] = ("query", "key", "value")
#: Owner name of Flax attention's output projection, ``(heads, head_dim,
#: out)``.
ATTENTION_OUTPUT_NAMES: tuple[str, ...] = ("out",)


def owner_name(path: KeyPath) -> Any:
  """The name of the module that owns the leaf (the key before its own)."""
  names = logical_names(path)
  return names[-2] if len(names) > 1 else None


def per_head(path: KeyPath, leaf: Any) -> MatrixAxes | None:
  """A ``matrix_axes`` function that orthogonalises Flax attention per head.

  The q/k/v kernels ``(..., in, heads, head_dim)`` (owned by a module named
  ``query``, ``key`` or ``value``) become ``heads`` matrices ``(in,
  head_dim)`` and the output kernel ``(..., heads, head_dim, out)`` (owned by
  ``out``) ``heads`` matrices ``(head_dim, out)``, as Dion's ``num_heads``
  and modded-nanogpt's separate q, k, v projections do; every other leaf
  keeps its default view. Leading axes (stacked layers) are batch axes.

  Example: ``om.muon(0.02, matrix_axes=om.per_head)``.
  """
  if len(getattr(leaf, "shape", ())) < 3 or last_name(path) != "kernel":
    return None
  owner = owner_name(path)
  if owner in ATTENTION_INPUT_NAMES:
    return MatrixAxes(-3, -1)
  if owner in ATTENTION_OUTPUT_NAMES:
    return MatrixAxes(-2, -1)
  return None


# --- Layouts of well-known libraries, read from their names ---------------
# Each rule below turns the leaf's non-batch axes ``rest`` into (fan_in,
# fan_out) axes for one library's layout; axes of ``rest`` in neither become
# batch axes. Each names the library, version and source file it was read
# from. :func:`default_axes` tries them in order.

#: HF-Flax GPT-2's ``FlaxConv1D`` modules and the modules that own them.
GPT2_CONV1D_NAMES: tuple[str, ...] = ("c_attn", "q_attn", "c_proj", "c_fc")
_GPT2_BLOCK_PARTS = frozenset(("attn", "crossattention", "mlp"))


def _gpt2_conv1d(names, shape, rest, named_array):
  """HF-Flax GPT-2's ``FlaxConv1D`` kernels are ``(out, in)``.

  transformers 4.57.6, ``models/gpt2/modeling_flax_gpt2.py``:
  ``FlaxConv1D`` creates ``kernel`` with shape ``(features,
  inputs.shape[-1])`` and computes ``x @ kernel.T``; GPT-2's attention
  (``c_attn``, cross-attention's ``q_attn``, ``c_proj``) and MLP (``c_fc``,
  ``c_proj``) use it. Recognised by GPT-2's own path,
  ``h/<i>/{attn,crossattention,mlp}/{c_attn,q_attn,c_proj,c_fc}/kernel``
  (Flax ``Dense`` kernels elsewhere keep ``(in, out)``).
  """
  del shape, named_array
  if (len(names) >= 5 and names[-1] == "kernel"
      and names[-2] in GPT2_CONV1D_NAMES and names[-3] in _GPT2_BLOCK_PARTS
      and is_index(names[-4]) and names[-5] == "h" and len(rest) >= 2):
    return (rest[-1],), (rest[-2],)
  return None


#: Gemma's einsum weights ``<owner>/w`` that map the model width ``D`` to
#: heads: ``q_einsum (N, D, H)``, ``kv_einsum (2, K, D, H)``, ``qkv_einsum
#: (3, N, D, H)``.
GEMMA_INPUT_EINSUMS: tuple[str, ...] = ("q_einsum", "kv_einsum",
                                        "qkv_einsum")


def _gemma_einsum(names, shape, rest, named_array):
  """Google's ``gemma`` einsum layouts.

  gemma 4.1 (``gemma/gm/nn/_modules.py``, read at 7691fd4; the same in
  3.3): ``Attention`` computes ``q_einsum('BTD,NDH->BTNH')`` with ``w (N, D,
  H)``: ``D`` contracted (fan-in), ``N`` and ``H`` free (fan-out ``N*H``,
  as for Flax's query kernel); ``kv_einsum('BSD,CKDH->CBSKH')`` with ``w
  (2, K, D, H)`` whose first axis is then split into separate K and V
  projections (a batch axis: 2 matrices ``(D, K*H)``), likewise
  ``qkv_einsum (3, N, D, H)``; ``attn_vec_einsum('BTNH,NHD->BTD')`` with
  ``w (N, H, D)``: fan-in ``N*H``, fan-out ``D`` (the default view).
  ``FeedForward``'s ``gating_einsum`` is ``(2, F, D)`` with
  ``'...F,NHF->...NH'`` when ``transpose_gating_einsum`` (every Gemma 2
  and 3 config, ``_gemma.py``) and ``(2, D, F)`` with ``'...F,NFH->...NH'``
  otherwise: gate and up projection (the first axis, a batch axis), each
  contracting ``D``. The names do not say which of the two it is, the sizes
  do: Gemma's hidden width ``F`` is always larger than ``D`` (equal sizes
  are taken as the transposed layout). ``linear (F, D)`` is ``(in, out)``,
  the default view.
  """
  del named_array
  leaf, owner = names[-1], names[-2] if len(names) > 1 else None
  if leaf == "w" and owner == "q_einsum" and len(rest) >= 3:
    return (rest[-2],), (rest[-3], rest[-1])
  if leaf == "w" and owner in ("kv_einsum", "qkv_einsum") and len(rest) >= 4:
    return (rest[-2],), (rest[-3], rest[-1])
  if leaf == "gating_einsum" and len(rest) >= 3:
    a, b = rest[-2], rest[-1]
    return ((a,), (b,)) if shape[a] < shape[b] else ((b,), (a,))
  return None


#: MaxText's routed-expert weights (leaves of their own, not ``kernel``s).
MAXTEXT_EXPERT_NAMES: tuple[str, ...] = ("wi_0", "wi_1", "wo")


def _maxtext_experts(names, shape, rest, named_array):
  """MaxText's expert stacks are ``experts`` separate matrices.

  MaxText ``src/maxtext/layers/moe.py`` (read at e591f30): ``RoutedMoE``
  holds ``wi_0``, ``wi_1`` ``(num_experts, emb, mlp)`` and ``wo
  (num_experts, mlp, emb)`` as parameters of their own; scanned layers
  (``decoders.py``, ``nn.scan(variable_axes={"params":
  cfg.param_scan_axis})``, ``param_scan_axis: 1`` in ``configs/base.yml``)
  insert the layer axis at 1: ``(experts, layers, emb, mlp)``. The last two
  axes are the matrix; every other axis indexes separate matrices.
  """
  del shape, named_array
  if names[-1] in MAXTEXT_EXPERT_NAMES and len(rest) >= 3:
    return (rest[-2],), (rest[-1],)
  return None


#: Owner names of attention input projections whose PyTorch-layout
#: ``weight`` may have several output axes (Haliax's ``(heads, head_dim,
#: embed)``).
WEIGHT_INPUT_PROJECTIONS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query_proj",
    "key_proj", "value_proj")


def _pytorch_weight(names, shape, rest, named_array):
  """A leaf named ``weight`` is in PyTorch's layout: ``(out, in, *spatial)``.

  - Equinox 0.13.8 (``equinox/nn/_linear.py``: ``Linear.weight
    (out_features, in_features)``, ``y = weight @ x``;
    ``equinox/nn/_conv.py``: ``Conv.weight (out_channels,
    in_channels // groups, *kernel_size)``): fan-out the first axis, fan-in
    the others.
  - Haliax (``src/haliax/nn/linear.py``, read at f41e7d4): ``Linear.init(In,
    Out, out_first=True)`` makes ``weight`` with the ``Out`` axes, then the
    ``In`` axes. Either may be several axes; the names say which only for
    the attention projections: the input projections
    (:data:`WEIGHT_INPUT_PROJECTIONS`, e.g. Levanter's ``q_proj``
    ``(heads, head_dim, embed)``) have one ``In`` axis, the last; all others
    are taken to have one ``Out`` axis, the first (``o_proj (embed, heads,
    head_dim)``).
  """
  del shape, named_array
  if names[-1] != "weight" or len(rest) < 2:
    return None
  owner = names[-2] if len(names) > 1 else None
  if owner in WEIGHT_INPUT_PROJECTIONS and len(rest) >= 3:
    return (rest[-1],), tuple(rest[:-1])
  return tuple(rest[1:]), (rest[0],)


def _levanter_gpt2(names, shape, rest, named_array):
  """Levanter's GPT-2 on Haliax keeps GPT-2's ``(in, out)`` layout.

  levanter ``src/levanter/models/gpt2.py``: ``Gpt2Attention.init`` makes
  ``c_attn = hnn.Linear.init(In=Embed, Out=(Qkv, Heads, HeadSize),
  out_first=False)`` -- its ``weight`` is ``(embed, qkv, heads,
  head_size)``, and the product is unbound along ``qkv`` into separate q, k,
  v (a batch axis) -- and ``c_proj`` with ``In=(Heads, HeadSize),
  Out=Embed, out_first=False``; the MLP's ``c_fc``/``c_proj`` are ``(in,
  out)`` too. Recognised by a Haliax ``weight`` (its path ends in an index,
  :func:`logical_names`) owned by ``attn/c_attn``, ``attn/c_proj``,
  ``mlp/c_fc`` or ``mlp/c_proj``: the In axes first, then the Out axes
  (fan-out the last axis, or ``heads, head_size`` for ``c_attn``).
  """
  del shape
  if not (named_array and len(names) >= 3 and names[-1] == "weight"
          and names[-2] in GPT2_CONV1D_NAMES
          and names[-3] in _GPT2_BLOCK_PARTS and len(rest) >= 2):
    return None
  if names[-2] == "c_attn" and len(rest) >= 4:
    return (rest[-4],), (rest[-2], rest[-1])
  return rest[:-1], rest[-1:]


def _flax_attention(names, shape, rest, named_array):
  """Flax attention's q/k/v kernels are ``(in, heads, head_dim)``.

  flax 0.12 (``flax/nnx/nn/attention.py`` ``MultiHeadAttention``,
  ``flax/linen/attention.py`` ``MultiHeadDotProductAttention``; MaxText's
  ``query``/``key``/``value`` too): ``LinearGeneral`` / ``DenseGeneral``
  kernels ``(in, heads, head_dim)`` owned by ``query``, ``key`` or
  ``value``: fan-in the first, fan-out ``heads*head_dim``; axes before
  them (stacked layers) are batch axes.
  """
  del shape, named_array
  if (len(rest) >= 3 and names[-1] == "kernel" and len(names) > 1
      and names[-2] in ATTENTION_INPUT_NAMES):
    return (rest[-3],), (rest[-2], rest[-1])
  return None


_LIBRARY_RULES = (_flax_attention, _gpt2_conv1d, _levanter_gpt2,
                  _gemma_einsum, _maxtext_experts, _pytorch_weight)


def default_axes(path: KeyPath, shape: tuple[int, ...],
                 rest: Sequence[int]) -> tuple[tuple[int, ...],
                                               tuple[int, ...]]:
  """The default ``(fan_in_axes, fan_out_axes)`` of a leaf from its names.

  ``rest`` are the leaf's axes that are not batch axes. The first library
  rule that matches the path decides (Flax attention's q/k/v kernels,
  HF-Flax GPT-2's ``FlaxConv1D``, Levanter's GPT-2, Gemma's einsums,
  MaxText's expert stacks, PyTorch-layout ``weight`` leaves of Equinox and
  Haliax); axes of
  ``rest`` it leaves out are batch axes. Otherwise, Flax's layout: the last
  axis is the fan-out and all others the fan-in (a conv kernel ``(H, W,
  C_in, C_out)`` as ``(H*W*C_in, C_out)``).
  """
  rest = tuple(rest)
  names = logical_names(path)
  raw = [key_name(k) for k in path]
  named_array = len(raw) > len(names) and is_index(raw[-1])
  if names:
    for rule in _LIBRARY_RULES:
      axes = rule(names, shape, rest, named_array)
      if axes is not None:
        return axes
  return rest[:-1], rest[-1:]


def _single(axes: tuple[int, ...]) -> int | None:
  return axes[0] if len(axes) == 1 else None


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """How one leaf maps onto a stack of ``(fan_in, fan_out)`` matrices.

  The leaf is transposed to ``batch_axes + fan_in_axes + fan_out_axes`` and
  reshaped to ``(num_matrices, fan_in, fan_out)``.

  Attributes:
    shape: the leaf's shape.
    batch_axes: sorted, non-negative axes that index separate matrices.
    fan_in_axes: the axes flattened (in this order) into the fan-in.
    fan_out_axes: the axes flattened (in this order) into the fan-out.
  """

  shape: tuple[int, ...]
  batch_axes: tuple[int, ...]
  fan_in_axes: tuple[int, ...]
  fan_out_axes: tuple[int, ...]

  @property
  def fan_in(self) -> int:
    return math.prod(self.shape[a] for a in self.fan_in_axes)

  @property
  def fan_out(self) -> int:
    return math.prod(self.shape[a] for a in self.fan_out_axes)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in self.batch_axes)

  @property
  def num_matrices(self) -> int:
    return math.prod(self.batch_shape)

  @property
  def transposed(self) -> bool:
    """Whether the canonical (wide, ``m <= n``) matrix is ``G^T``."""
    return self.fan_in > self.fan_out

  @property
  def small_side(self) -> int:
    return min(self.fan_in, self.fan_out)

  @property
  def canonical_shape(self) -> tuple[int, int]:
    return (min(self.fan_in, self.fan_out), max(self.fan_in, self.fan_out))

  @property
  def matrix_axes(self) -> tuple[int, ...]:
    """The leaf's axes that are not batch axes: fan-in axes, then fan-out."""
    return self.fan_in_axes + self.fan_out_axes

  @property
  def fan_out_axis(self) -> int | None:
    """The leaf's axis of ``fan_out``; ``None`` if the fan-out is several
    axes flattened (the q/k/v kernels of attention)."""
    return _single(self.fan_out_axes)

  @property
  def small_side_axis(self) -> int | None:
    """The leaf's axis of the matrix's small side; ``None`` if that side is
    several axes flattened (the fan-in of a conv kernel)."""
    return _single(self.fan_out_axes if self.transposed else self.fan_in_axes)

  def _perm(self) -> tuple[int, ...]:
    return self.batch_axes + self.fan_in_axes + self.fan_out_axes

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """Leaf -> ``(num_matrices, m, n)`` canonical (wide) matrices."""
    x = jnp.transpose(x, self._perm()).reshape(
        self.num_matrices, self.fan_in, self.fan_out)
    return jnp.swapaxes(x, -1, -2) if self.transposed else x

  def from_matrices(self, x: jax.Array) -> jax.Array:
    """Inverse of :meth:`to_matrices`."""
    if self.transposed:
      x = jnp.swapaxes(x, -1, -2)
    perm = self._perm()
    x = x.reshape(tuple(self.shape[a] for a in perm))
    return jnp.transpose(x, tuple(perm.index(a) for a in range(len(perm))))

  def shape_scale(self, kind: str) -> float:
    """``"spectral"``: ``sqrt(max(1, fan_out / fan_in))``; ``"rms"``:
    ``0.2 * sqrt(max(fan_in, fan_out))``; ``"none"``: 1."""
    if kind == "spectral":
      return math.sqrt(max(1.0, self.fan_out / self.fan_in))
    if kind == "rms":
      return 0.2 * math.sqrt(max(self.fan_in, self.fan_out))
    if kind == "none":
      return 1.0
    raise ValueError(
        f"Unknown shape_scale {kind!r}: use one of {SHAPE_SCALES}.")


def _normalize_axes(spec, ndim: int, where: str,
                    min_rest: int = 2) -> tuple[int, ...]:
  if spec is None:
    return ()
  if isinstance(spec, jax.Array):
    raise ValueError(
        f"batch_axes is the array {spec!r}: under optax.inject_hyperparams a "
        "function passed as batch_axes is taken for a schedule; pass "
        "static_args=om.static_args(alias), which names 'batch_axes'.")
  per_leaf = (" Axes shared by every leaf must fit them all; otherwise pass "
              "batch_axes=lambda path, leaf: axes, returning None for leaves "
              "that are single matrices. (Under optax.inject_hyperparams a "
              "batch_axes function must be named in static_args: "
              "om.static_args(alias).)")
  try:
    axes = (spec,) if isinstance(spec, int) else tuple(spec)
  except TypeError:
    axes = (spec,)
  out = []
  for a in axes:
    if (not isinstance(a, (int, np.integer)) or isinstance(a, bool)
        or not -ndim <= a < ndim):
      raise ValueError(
          f"batch_axes {spec!r} does not fit the leaf at {where} "
          f"({ndim} dims): give axis indices in [-{ndim}, {ndim})."
          + per_leaf)
    out.append(int(a) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(
        f"batch_axes {spec!r} repeats an axis for the leaf at {where}: name "
        "each batch axis once.")
  if ndim - len(out) < min_rest:
    raise ValueError(
        f"batch_axes {spec!r} leaves fewer than 2 matrix axes of the leaf at "
        f"{where} with {ndim} dims: a Muon leaf needs (fan_in, fan_out) axes "
        "besides its batch axes." + per_leaf)
  return tuple(sorted(out))


def resolve_matrix_axes(matrix_axes: MatrixAxesArg) -> MatrixAxesFn | None:
  """Turns a ``matrix_axes`` argument into a function ``(path, leaf) ->
  spec or None`` (``None`` for ``None``).

  A tree of specs is indexed once by its leaves' paths (as
  :func:`path_str` writes them, so an NNX ``State`` and its pure dict
  match); leaves it does not name keep their default view.
  """
  if matrix_axes is None or is_function(matrix_axes) and not is_axes_spec(
      matrix_axes):
    return matrix_axes
  if isinstance(matrix_axes, jax.Array):
    raise ValueError(
        f"matrix_axes is the array {matrix_axes!r}: under "
        "optax.inject_hyperparams a function or tree passed as matrix_axes is "
        "taken for a hyperparameter; pass static_args=om.static_args(alias), "
        "which names 'matrix_axes'.")
  if is_axes_spec(matrix_axes):
    return lambda path, leaf: matrix_axes
  flat, _ = jax.tree_util.tree_flatten_with_path(
      matrix_axes, is_leaf=lambda x: x is None or is_axes_spec(x))
  table = {}
  for path, spec in flat:
    if spec is not None and not is_axes_spec(spec):
      raise ValueError(
          f"matrix_axes has {spec!r} at {path_str(path)!r}: its leaves must "
          "be om.MatrixAxes(fan_in, fan_out), "
          "optax.contrib.MuonDimensionNumbers or None.")
    table[path_str(path)] = spec
  return lambda path, leaf: table.get(path_str(path))


def _spec_for(matrix_axes, path, leaf):
  fn = resolve_matrix_axes(matrix_axes)
  if fn is None:
    return None
  spec = fn(path, leaf)
  if spec is not None and not is_axes_spec(spec):
    raise ValueError(
        f"matrix_axes gave {spec!r} for the leaf {path_str(path)!r}: return "
        "om.MatrixAxes(fan_in, fan_out), optax.contrib.MuonDimensionNumbers "
        "or None (default view).")
  return spec


def _spec_part(part, ndim: int, where: str, what: str) -> tuple[int, ...]:
  axes = (part,) if isinstance(part, (int, np.integer)) else tuple(part)
  if not axes or any(
      not isinstance(a, (int, np.integer)) or isinstance(a, bool)
      or not -ndim <= a < ndim for a in axes):
    raise ValueError(
        f"matrix_axes gives {what}={part!r} for the leaf at {where} ({ndim} "
        f"dims): give one or more axis indices in [-{ndim}, {ndim}).")
  return tuple(int(a) % ndim for a in axes)


def matrix_ndim(path: KeyPath, leaf: Any, batch_axes: BatchAxes,
                matrix_axes: MatrixAxesArg = None) -> int:
  """How many of a leaf's dimensions are matrix dimensions (0 for
  non-arrays): 2 for a leaf with a ``matrix_axes`` spec that fits it, else
  those that are not batch axes.

  Batch axes that do not fit the leaf count as none: the label rule asks
  only whether a leaf could be a matrix; :func:`matrix_view` reports the
  misfit when the leaf goes to Muon.
  """
  shape = tuple(getattr(leaf, "shape", ()))
  if not shape:
    return 0
  if _spec_for(matrix_axes, path, leaf) is not None:
    try:
      matrix_view(path, leaf, batch_axes, matrix_axes=matrix_axes)
      return 2
    except ValueError:
      return 0
  spec = batch_spec(batch_axes, path, leaf)
  try:
    axes = _normalize_axes(spec, len(shape), repr(path_str(path)), min_rest=0)
  except ValueError:
    axes = ()
  return len(shape) - len(axes)


def try_matrix_view(path: KeyPath, leaf: Any, batch_axes: BatchAxes = None,
                    matrix_axes: MatrixAxesArg = None) -> MatrixView | None:
  """:func:`matrix_view`, or ``None`` where it would raise."""
  try:
    return matrix_view(path, leaf, batch_axes, matrix_axes=matrix_axes)
  except (ValueError, TypeError, AttributeError):
    return None


def matrix_view(
    path: KeyPath, leaf: Any, batch_axes: BatchAxes = None,
    who: str = "scale_by_muon", matrix_axes: MatrixAxesArg = None,
) -> MatrixView:
  """Builds the matrix view of one leaf, checking it can go through Muon.

  The rules, in order:

  1. A ``matrix_axes`` spec for the leaf (:class:`MatrixAxes` or
     ``optax.contrib.MuonDimensionNumbers``) names its fan-in and fan-out
     axes; every other axis is a batch axis (``batch_axes`` may name some of
     them, never a fan-in or fan-out axis).
  2. Otherwise ``batch_axes`` index separate matrices, and the other axes
     are viewed by :func:`default_axes`, from the leaf's names:

     - a Flax attention q/k/v kernel (leaf ``kernel`` of a module named
       ``query``, ``key`` or ``value``; :data:`ATTENTION_INPUT_NAMES`) is
       ``(in, heads, head_dim)`` -> ``(in, heads*head_dim)``: its last two
       axes are the fan-out, the one before the fan-in, and any before that
       (stacked layers) batch axes;
     - HF-Flax GPT-2's ``FlaxConv1D`` kernels
       (``h/<i>/attn/c_attn/kernel``, ...) are ``(out, in)``;
     - Gemma's ``q_einsum/w (N, D, H)`` is ``(D, N*H)``, ``kv_einsum/w (2,
       K, D, H)`` and ``qkv_einsum/w`` are 2 or 3 matrices ``(D, K*H)``,
       ``gating_einsum (2, F, D)`` 2 matrices ``(D, F)``;
     - MaxText's expert stacks ``wi_0``, ``wi_1``, ``wo`` (``(experts,
       [layers,] d, f)``) are one matrix per expert (and layer);
     - Levanter's GPT-2 (Haliax ``weight/0`` under ``attn/c_attn``, ...)
       keeps ``(in, out)``, ``c_attn``'s ``qkv`` axis a batch axis;
     - a ``weight`` (Equinox, Haliax, PyTorch) is ``(out, in, *spatial)``;
     - any other leaf has its last axis as fan-out and all others as fan-in:
       a dense kernel as it is, a conv kernel ``(H, W, C_in, C_out)`` as
       ``(H*W*C_in, C_out)``, the attention output kernel ``(heads,
       head_dim, out)`` as ``(heads*head_dim, out)``.

  Args:
    path: the leaf's key path (used in error messages, the name rule and by
      ``batch_axes`` / ``matrix_axes``).
    leaf: an array (or anything with ``shape`` and ``dtype``).
    batch_axes: ``None``, axes shared by every leaf, or a function
      ``(path, leaf) -> axes``.
    who: name of the transformation, for error messages.
    matrix_axes: ``None``, a spec for every leaf, a tree of specs (or
      ``None``) like the params, or a function ``(path, leaf) -> spec or
      None``.

  Raises:
    ValueError: naming the leaf's path, for a leaf with fewer than 2 matrix
      dimensions, a non-floating leaf, or batch or matrix axes that do not
      fit.
  """
  where = repr(path_str(path))
  shape = tuple(leaf.shape)
  if len(shape) < 2:
    raise ValueError(
        f"{who} got the leaf {where} with shape {shape}: Muon works on "
        "matrices (2 or more dims). Route vectors, scalars, biases and norms "
        "to AdamW (om.muon_labels does this) or fix param_labels.")
  if not jnp.issubdtype(leaf.dtype, jnp.floating):
    raise ValueError(
        f"{who} got the leaf {where} of dtype {leaf.dtype}: Muon needs "
        "floating-point parameters. Label it 'adamw' or exclude it from the "
        "optimizer (e.g. nnx.Optimizer(..., wrt=nnx.Param)).")
  ndim = len(shape)
  leaf_batch = batch_spec(batch_axes, path, leaf)
  spec = _spec_for(matrix_axes, path, leaf)
  if spec is not None:
    fan_in, fan_out = _spec_axes(spec)
    fi = _spec_part(fan_in, ndim, where, "fan_in")
    fo = _spec_part(fan_out, ndim, where, "fan_out")
    if len(set(fi + fo)) != len(fi + fo):
      raise ValueError(
          f"matrix_axes {spec!r} names an axis twice for the leaf at {where} "
          f"with shape {shape}: fan-in and fan-out axes are distinct.")
    user_batch = _normalize_axes(leaf_batch, ndim, where, min_rest=0)
    if set(user_batch) & set(fi + fo):
      raise ValueError(
          f"batch_axes {leaf_batch!r} and matrix_axes {spec!r} share an axis "
          f"of the leaf at {where} with shape {shape}: a batch axis cannot be "
          "a fan-in or fan-out axis.")
    batch = tuple(a for a in range(ndim) if a not in fi + fo)
  else:
    batch = _normalize_axes(leaf_batch, ndim, where)
    rest = tuple(a for a in range(ndim) if a not in batch)
    fi, fo = default_axes(path, shape, rest)
    batch = tuple(a for a in range(ndim) if a not in fi + fo)
  view = MatrixView(shape, batch, fi, fo)
  if view.fan_in == 0 or view.fan_out == 0:
    raise ValueError(f"{who} got the empty leaf {where} with shape {shape}.")
  return view
