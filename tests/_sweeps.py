"""Which cases of a sweep over the optimizers ``make test-fast`` runs.

A sweep that repeats one check for every variant runs, in ``make test-fast``,
only for the cases named in ``fast``: by default Muon (the Newton–Schulz path
every variant but MomMuon shares) and MomMuon (the inverse-root path). The
other cases are marked ``slow``; ``make test`` runs them all.
"""

from __future__ import annotations

import pytest

import optax_muon as om

# Every alias by name, for the sweeps over them: the library's registry.
ALIASES = om.ALIASES

FAST = ("muon", "mommuon")
#: Cases whose sweep runs in the integration tier (``make test-integration``,
#: CI) only: the Hyperball aliases end Muon's and NorMuon's chains in one more
#: step, which tests/test_hyperball.py checks in ``make test``.
INTEGRATION = ("muonh", "normuonh")


def sweep(cases, fast=FAST):
  """``cases`` (names, or functions such as ``om.muon``) as pytest params:
  those in :data:`INTEGRATION` marked ``integration`` (and ``slow``), the
  others not in ``fast`` marked ``slow``; ``fast=None`` marks only the
  :data:`INTEGRATION` ones."""
  def marks(name):
    if name in INTEGRATION:
      return (pytest.mark.slow, pytest.mark.integration)
    if fast is None or name in fast:
      return ()
    return pytest.mark.slow
  return [pytest.param(c, id=getattr(c, "__name__", c),
                       marks=marks(getattr(c, "__name__", c)))
          for c in cases]
