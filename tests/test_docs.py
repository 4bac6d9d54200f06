"""The README is the landing page and the docs site the manual (issue 22).

These tests break when the README grows past its budget, when a link in a
Markdown file outside the Sphinx build points nowhere (Sphinx checks the
pages it builds, ``make docs``), when a guide page can be reached neither
from the README nor from the site's table of contents, or when the README's
Flax NNX example stops running or training.
"""

import contextlib
import io
import re
from pathlib import Path

import pytest

import optax_muon as om

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"
INDEX = ROOT / "docs" / "index.md"
#: Markdown files that GitHub renders but Sphinx does not build: their links
#: are checked here.
UNBUILT = ("README.md", "benchmarks/README.md", "benchmarks/SHARDING.md")
MAX_README_LINES = 200

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text):
  """The lines of a Markdown text outside fenced code blocks."""
  fenced = False
  for line in text.splitlines():
    if _FENCE.match(line):
      fenced = not fenced
    elif not fenced:
      yield line


def _slug(heading):
  """The anchor GitHub and MyST (``myst_heading_anchors``) give a heading:
  lower case, punctuation but ``-`` and ``_`` dropped, spaces as ``-``."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(path):
  return {_slug(line.lstrip("#")) for line in _prose(path.read_text())
          if re.match(r"#{1,6} ", line)}


def _local_links(path):
  """``(target, anchor)`` of every relative link in ``path``'s prose."""
  for line in _prose(path.read_text()):
    for target in _LINK.findall(line):
      if re.match(r"[a-z]+:", target):  # https:, mailto:
        continue
      file, _, anchor = target.partition("#")
      yield file, anchor


def test_readme_is_at_most_200_lines():
  n = len(README.read_text().splitlines())
  assert n <= MAX_README_LINES, (
      f"README.md has {n} lines, over its budget of {MAX_README_LINES}: move "
      "the detail to a page of docs/guide/ or docs/results.md and link it")


@pytest.mark.parametrize("name", UNBUILT)
def test_local_links_resolve(name):
  source = ROOT / name
  broken = []
  for file, anchor in _local_links(source):
    target = (source.parent / file).resolve() if file else source
    if not target.exists():
      broken.append(f"{file}: no such file")
      continue
    if anchor and target.suffix == ".md" and anchor not in _anchors(target):
      broken.append(f"{file}#{anchor}: no such heading in {target.name}")
  assert not broken, f"{name} links nowhere: {broken}"


def test_every_guide_page_is_reachable():
  readme = {(README.parent / f).resolve() for f, _ in _local_links(README)}
  toctree = set()
  for block in re.findall(r"```\{toctree\}\n(.*?)```", INDEX.read_text(),
                          re.S):
    toctree |= {line.strip() for line in block.splitlines()
                if line.strip() and not line.startswith(":")}
  pages = sorted(GUIDE.glob("*.md"))
  assert pages, "docs/guide/ has no pages"
  lost = [p.name for p in pages
          if p.resolve() not in readme and f"guide/{p.stem}" not in toctree]
  assert not lost, (f"guide pages linked neither from README.md nor from the "
                    f"toctree of docs/index.md: {lost}")


def test_api_roles_name_public_objects():
  """``{func}`optax_muon.x``` in the docs pages names an exported object
  (Sphinx leaves an unknown target as plain text, without a warning)."""
  pages = [INDEX, ROOT / "docs" / "results.md", *GUIDE.glob("*.md")]
  unknown = []
  for page in pages:
    for name in re.findall(r"\{(?:func|class|data|obj)\}`optax_muon\.(\w+)`",
                           page.read_text()):
      if name not in om.__all__:
        unknown.append(f"{page.name}: optax_muon.{name}")
  assert not unknown, unknown


def test_results_keep_one_steps_to_target_section():
  """The steps-to-target table is rewritten by the lead from its benchmark:
  one delimited section, so that the rewrite touches nothing else."""
  text = (ROOT / "docs" / "results.md").read_text()
  assert text.count("<!-- BEGIN steps-to-target") == 1
  assert text.count("<!-- END steps-to-target -->") == 1
  assert text.index("<!-- BEGIN steps-to-target") < text.index(
      "<!-- END steps-to-target -->")


def test_readme_nnx_example_runs_and_routes():
  pytest.importorskip("flax.nnx")
  section = README.read_text().split("## Use it with Flax NNX", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  ns = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README-nnx", "exec"), ns)
  losses = ns["losses"]
  assert len(losses) == 30 and all(map(lambda v: v == v, losses))
  assert losses[-1] < 0.5 * losses[0], losses  # it trains
  # The routing its comment states: up, hidden -> Muon; head, biases -> AdamW.
  labels = dict(re.findall(r"^(\S+)\s+\([^)]*\)\s+(muon|adamw)\b",
                           out.getvalue(), re.M))
  assert labels == {"up/kernel": "muon", "hidden/kernel": "muon",
                    "head/kernel": "adamw", "up/bias": "adamw",
                    "hidden/bias": "adamw", "head/bias": "adamw"}, labels
