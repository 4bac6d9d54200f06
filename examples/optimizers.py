"""The optimizers ``compare.py`` can run, by name.

:data:`OPTIMIZERS` maps a name to ``(alias, default keyword arguments)``; a
preset is one more line, e.g. ``"muon_pe": (om.muon, {"ns_coeffs":
"polar_express"})``. On the command line ``--opt NAME:key=value`` adds or
overrides keyword arguments of one optimizer, ``--lr NAME=VALUE`` its learning
rate.

Learning rates: each task lists defaults (``Task.learning_rates``); a name the
task does not list falls back to its alias's (``muon_pe`` to ``muon``), and a
Muon preset with ``shape_scale="rms"`` to AdamW's, since that scale makes
Muon's update RMS match AdamW's (Liu et al., "Muon is Scalable for LLM
Training", 2025, https://arxiv.org/abs/2502.16982). The AdamW part of every
Muon-family optimizer (embeddings, output head, biases, norms) uses the task's
AdamW learning rate unless ``adamw_learning_rate`` is given.

Where the names come from: ``adamw``; every alias of the library's registry
``om.ALIASES`` under its own name, at its defaults; the examples' presets
below; and the presets a study adds with :func:`register` when it is
imported (``examples/studies``: :func:`examples.studies.load` imports them,
and ``compare.py`` calls it), so this module imports no study.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import optax

import optax_muon as om


def adamw(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9,
          b2: float = 0.95, eps: float = 1e-8,
          weight_decay: float = 0.0) -> optax.GradientTransformation:
  """``optax.adamw`` with the same moments, epsilon and (no) weight decay as
  the AdamW part of the Muon-family aliases, so the comparison changes only
  the matrices' update."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay)


Alias = Callable[..., optax.GradientTransformation]

#: name -> (alias, default keyword arguments). One line per preset; a study
#: adds its own with :func:`register`.
OPTIMIZERS: dict[str, tuple[Alias, dict[str, Any]]] = {
    "adamw": (adamw, {}),
    # muon, adamuon, mommuon, ogsignmuon, normuon, muonh, normuonh, ...
    **{name: (alias, {}) for name, alias in om.ALIASES.items()},
    # Polar Express coefficients (Amsel et al., 2025,
    # https://arxiv.org/abs/2505.16932).
    "muon_pe": (om.muon, {"ns_coeffs": "polar_express"}),
    # Cautious weight decay: decay only where update and weight agree in sign.
    "muon_cwd": (om.muon, {"weight_decay": 0.025,
                           "cautious_weight_decay": True}),
    # Moonlight's update RMS matching: AdamW's learning rate transfers.
    "muon_rms": (om.muon, {"shape_scale": "rms"}),
    # MomMuon's options (README: "MomMuon: what we measured"). The seed's
    # exact form: average the inverse square roots, refresh every step, no
    # rescale.
    "mommuon_seed": (om.mommuon, {
        "ns_average": "preconditioner", "ns_beta": 0.9, "ns_every": 1,
        "ns_rescale": False}),
    "mommuon_every10": (om.mommuon, {"ns_every": 10}),
    "mommuon_every1": (om.mommuon, {"ns_every": 1}),
    "mommuon_norescale": (om.mommuon, {"ns_rescale": False}),
    # NorMuon + Polar Express + Hyperball (Wen et al., 2025: each hidden
    # matrix kept on the sphere of its initial norm): the stack
    # benchmarks/steps_to_target.py measures as its "best stack" candidate.
    "normuonh_pe": (om.normuonh, {"ns_coeffs": "polar_express"}),
}

#: The five optimizers of the comparison (the default ``--optimizers``).
DEFAULT_OPTIMIZERS = ("adamw", "muon", "adamuon", "mommuon", "ogsignmuon")


def _alias_name(alias: Alias) -> str:
  return alias.__name__


def register(name: str, alias: Alias,
             defaults: Mapping[str, Any] | None = None) -> None:
  """Adds the preset ``name`` -> ``(alias, defaults)`` to :data:`OPTIMIZERS`.

  For presets that live outside this module (a study's optimizer): the
  study calls it when imported, e.g. ``register("ogsignmuon_spectral",
  ogsignmuon_spectral)``. Registering the same function under the same name
  again (a reloaded module) replaces the entry.

  Args:
    name: the name ``--optimizers`` takes; an identifier, not yet taken.
    alias: ``alias(learning_rate, **kwargs)`` -> a GradientTransformation.
    defaults: its default keyword arguments (checked against its
      signature).

  Raises:
    ValueError: ``name`` is not an identifier or is taken by another
      optimizer, ``alias`` is not callable, or ``defaults`` holds a keyword
      ``alias`` does not accept.
  """
  if not name.isidentifier():
    raise ValueError(
        f"register({name!r}): an optimizer's name must be an identifier "
        "(letters, digits, _; a ~TAG suffix is the command line's), e.g. "
        "'muon_pe'.")
  if not callable(alias):
    raise ValueError(
        f"register({name!r}, {alias!r}): the alias must be a function "
        "alias(learning_rate, **kwargs) that returns an optax "
        "GradientTransformation.")
  defaults = dict(defaults or {})
  if name in OPTIMIZERS:
    old, _ = OPTIMIZERS[name]
    same = (getattr(old, "__module__", None), getattr(old, "__qualname__",
                                                      None))
    if same != (getattr(alias, "__module__", None),
                getattr(alias, "__qualname__", None)):
      raise ValueError(
          f"register({name!r}): the name is taken by "
          f"{getattr(old, '__module__', '?')}."
          f"{getattr(old, '__qualname__', old)}; choose another name.")
  accepted = set(inspect.signature(alias).parameters) - {"learning_rate"}
  unknown = sorted(set(defaults) - accepted)
  if unknown:
    raise ValueError(
        f"register({name!r}): {_alias_name(alias)} does not accept "
        f"{', '.join(unknown)}; it accepts: {', '.join(sorted(accepted))}.")
  OPTIMIZERS[name] = (alias, defaults)


def base_name(name: str) -> str:
  """``"mommuon~every10"`` -> ``"mommuon"``: a ``~TAG`` suffix names one more
  run of the same preset, so one call can compare several settings of it
  (each with its own ``--opt``/``--lr``)."""
  return name.split("~", 1)[0]


def check_name(name: str) -> None:
  if base_name(name) not in OPTIMIZERS:
    raise ValueError(
        f"Unknown optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}.")


def default_lr(name: str, learning_rates: Mapping[str, float],
               options: Mapping[str, Any] | None = None) -> float:
  """The default learning rate of optimizer ``name`` on a task.

  In order: the task's entry for ``name``; AdamW's when the optimizer is
  AdamW or uses ``shape_scale="rms"``; the task's entry for the alias
  (``muon_pe`` -> ``muon``); the task's ``"muon"`` entry.
  """
  check_name(name)
  if base_name(name) in learning_rates:
    return float(learning_rates[base_name(name)])
  alias, defaults = OPTIMIZERS[base_name(name)]
  kwargs = {**defaults, **(options or {})}
  if alias is adamw or kwargs.get("shape_scale") == "rms":
    return float(learning_rates["adamw"])
  return float(learning_rates.get(_alias_name(alias), learning_rates["muon"]))


def options_for(name: str, overrides: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
  """The preset's keyword arguments with ``overrides`` on top, checked
  against the alias's signature."""
  check_name(name)
  alias, defaults = OPTIMIZERS[base_name(name)]
  kwargs = {**defaults, **(overrides or {})}
  accepted = [p for p in inspect.signature(alias).parameters
              if p != "learning_rate"]
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(
        f"Unknown option(s) {', '.join(unknown)} for optimizer {name!r} "
        f"({_alias_name(alias)}); it accepts: {', '.join(accepted)}.")
  return kwargs


def build(name: str, learning_rate: float, options: Mapping[str, Any],
          adamw_learning_rate: float) -> optax.GradientTransformation:
  """The optimizer ``name`` with ``options`` (from :func:`options_for`).

  A Muon-family optimizer's AdamW part gets ``adamw_learning_rate`` unless
  ``options`` sets ``adamw_learning_rate`` itself.
  """
  alias, _ = OPTIMIZERS[base_name(name)]
  kwargs = dict(options)
  if alias is not adamw:
    kwargs.setdefault("adamw_learning_rate", adamw_learning_rate)
  return alias(learning_rate, **kwargs)


def parse_value(text: str) -> Any:
  """A Python literal (``0.9``, ``True``, ``(1, 2)``) or else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_opt(spec: str) -> tuple[str, dict[str, Any]]:
  """``"muon:ns_coeffs=polar_express,ns_steps=6"`` ->
  ``("muon", {"ns_coeffs": "polar_express", "ns_steps": 6})``.

  Pairs are separated by commas that are followed by ``key=``, so a value may
  itself hold commas (``ns_coeffs=((3.4,-4.8,2.0),)``).
  """
  name, sep, rest = spec.partition(":")
  if not sep or not rest:
    raise ValueError(
        f"--opt {spec!r}: expected NAME:key=value[,key=value...], e.g. "
        "muon:ns_coeffs=polar_express.")
  options = {}
  for pair in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", rest):
    key, eq, value = pair.partition("=")
    if not eq or not key.strip().isidentifier():
      raise ValueError(
          f"--opt {spec!r}: {pair!r} is not key=value.")
    options[key.strip()] = parse_value(value.strip())
  return name.strip(), options


def parse_lr(spec: str) -> tuple[str, float]:
  """``"muon=0.03"`` -> ``("muon", 0.03)``."""
  name, eq, value = spec.partition("=")
  try:
    lr = float(value)
  except ValueError:
    lr = None
  if not eq or lr is None or not lr > 0:
    raise ValueError(
        f"--lr {spec!r}: expected NAME=VALUE with a positive VALUE, e.g. "
        "muon=0.03.")
  return name.strip(), lr
