"""Sphinx configuration: the API reference of optax_muon, built from its docstrings.

Build with ``make docs`` (warnings are errors). Markdown pages are read by
MyST; docstrings are Google style (Napoleon).
"""

import os
import sys

# Document the checkout this file sits in, installed or not.
sys.path.insert(0, os.path.abspath(".."))

import optax_muon  # noqa: E402

project = "optax_muon"
author = "optax_muon authors"
copyright = "2026, optax_muon authors"
release = optax_muon.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: ``$...$`` math, ``:::`` fences, and header anchors so that links to
# ``#section`` in the Markdown pages resolve.
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# autodoc: signatures as written, members in source order, no stub files.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False

# Napoleon: Google docstrings; ``Attributes:`` as fields, so that a class
# documented with ``:members:`` does not describe an attribute twice.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"optax_muon {release}"


def _data_doc(app, what, name, obj, options, lines):
  """Describes a re-exported constant by its ``#:`` comment in its own module.

  autodoc reads ``#:`` comments only from the module a name is documented
  under (``optax_muon``, whose ``__init__`` just imports), and otherwise falls
  back to the docstring of the value's type (``tuple``). Look the comment up in
  the private module that defines the constant instead.
  """
  if what != "data" or not name.startswith("optax_muon."):
    return
  import importlib
  import pkgutil

  from sphinx.pycode import ModuleAnalyzer

  attr = name.rsplit(".", 1)[1]
  for info in pkgutil.iter_modules(optax_muon.__path__):
    modname = f"optax_muon.{info.name}"
    module = importlib.import_module(modname)
    if getattr(module, attr, None) is not obj:
      continue
    doc = ModuleAnalyzer.for_module(modname).find_attr_docs().get(("", attr))
    if doc:
      lines[:] = list(doc)
      return


def _check_public_names(app, env):
  """Warns (an error under ``-W``) for a public name the reference misses.

  Every name in ``optax_muon.__all__`` that the package defines must be
  described somewhere (``docs/api.md``), so a new export cannot ship
  undocumented.
  """
  from sphinx.util import logging

  logger = logging.getLogger("optax_muon.docs")
  described = set(env.get_domain("py").objects)
  for name in optax_muon.__all__:
    if not hasattr(optax_muon, name):
      logger.info("optax_muon.__all__ names %s, which the package does not "
                  "define; not documented", name)
      continue
    if f"optax_muon.{name}" not in described:
      logger.warning("optax_muon.%s is in __all__ but not in docs/api.md", name)


def setup(app):
  app.connect("autodoc-process-docstring", _data_doc)
  app.connect("env-check-consistency", _check_public_names)
