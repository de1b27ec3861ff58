"""The README and docs point only at things that exist: every relative link (and its anchor) and every
repository path they name in backticks."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# dated measurement logs name the files of the tree they were written in: their links must resolve,
# the paths they name need not exist any more
CURRENT = [doc for doc in DOCS if "experiments" not in doc.relative_to(ROOT).parts]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a backticked repository path: starts at a top-level folder of the repository, no placeholders
REPO_PATH = re.compile(r"`((?:src|docs|workflow|results|tests|benchmarks|profiles|\.ci)/[^`\s<>*{}]*)`")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"(?m)^#+ (.+)$", markdown)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_their_anchors_exist(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
            broken.append(target)
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("doc", CURRENT, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_paths_exist(doc):
    missing = [p for p in REPO_PATH.findall(doc.read_text()) if not (ROOT / p).exists()]
    assert missing == [], f"{doc.relative_to(ROOT)}: names paths that do not exist: {missing}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
