"""Suite-wide pytest configuration."""

from __future__ import annotations

# The modules whose tests run subprocesses or whole compare.py trainings
# (tens of seconds each), in the order they should start.
_LONGEST_FIRST = ("test_multihost.py", "test_sharding.py", "test_examples.py")


def pytest_collection_modifyitems(config, items):
  """Runs the longest tests first: under ``pytest -n 2`` (``make test``)
  xdist hands out tests in collection order, and a long test handed out
  last would run alone while the other worker idles."""
  del config

  def rank(item):
    name = item.path.name
    return (_LONGEST_FIRST.index(name) if name in _LONGEST_FIRST
            else len(_LONGEST_FIRST))

  items.sort(key=rank)  # stable: the order within a module is kept
