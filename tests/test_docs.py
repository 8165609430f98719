"""Every relative link in README.md and docs/*.md points at a file of the checkout (and an anchor at a
heading of that file); the README keeps the test command that .ci/run extracts."""

import re
import urllib.parse

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at the first blank or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _strip_code(text):
  """The text without fenced code blocks and inline code, where brackets are not links."""
  text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
  return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading):
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  h = re.sub(r"[`*_]", "", heading.strip().lower())
  h = re.sub(r"[^\w\- ]", "", h)
  return h.replace(" ", "-")


def _anchors(path):
  text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
  return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, flags=re.M)}


def _links(page):
  for target in LINK.findall(_strip_code(page.read_text(encoding="utf-8"))):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
      continue
    yield target


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page):
  broken = []
  for target in _links(page):
    path, _, anchor = target.partition("#")
    dest = (page.parent / urllib.parse.unquote(path)).resolve() if path else page
    if not dest.exists():
      broken.append(f"{target}: no file {dest}")
    elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
      broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
  assert not broken, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_the_checker_sees_broken_links(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("# Title\n[ok](page.md#title) [bad](missing.md) [anchor](page.md#nope) `[code](x.md)`\n")
  found = list(_links(page))
  assert found == ["page.md#title", "missing.md", "page.md#nope"]
  assert _anchors(page) == {"title"}


def test_slugs_follow_github():
  assert _slug("The 2D table (3 seeds)") == "the-2d-table-3-seeds"
  assert _slug("What makes the CPU iteration fast") == "what-makes-the-cpu-iteration-fast"
  assert _slug("`config.perf` options, step by step") == "configperf-options-step-by-step"


def test_readme_keeps_the_ci_command_and_stays_short():
  lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
  ci = [i for i, line in enumerate(lines) if re.match(r"^python3 -m venv .* pytest", line)]
  assert ci and ci[0] == 4, "the second command of the README is the test command .ci/run extracts"
  assert lines[3].startswith("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python main.py")
  assert len(lines) <= 260, f"README.md has {len(lines)} lines; details belong in docs/"


def test_no_file_points_outside_the_checkout():
  """Everything a test or a benchmark needs is in the clone: no file names the sibling folder the
  developers' machines keep next to it."""
  import subprocess

  forbidden = "/".join(["..", "shared"])
  files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
  offenders = []
  for name in files:
    path = REPO / name
    if not path.is_file() or path.suffix not in {".py", ".md", ".sh", ".json", ".txt", ""}:
      continue
    if forbidden in path.read_text(encoding="utf-8", errors="replace"):
      offenders.append(name)
  assert not offenders, offenders
