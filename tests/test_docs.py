"""The documentation a newcomer reads: README.md, docs/*.md and the READMEs of infra/, sources/, costs/.

The README stays short enough to read in one sitting and shows the test command CI runs. Every
relative link (and its #anchor) leads somewhere, and every file path, module, `python -m` command
and imported name the pages mention exists, so a module that moves or a name that is renamed
fails here until the pages follow.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

from pipeline.codedeps import module_file

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# The READMEs of the folders a user meets (cluster configs, their data, their cost matrices).
FOLDER_READMES = [ROOT / "infra" / "README.md", ROOT / "sources" / "README.md", ROOT / "costs" / "README.md"]
PAGES = [README, *DOCS, *FOLDER_READMES]
MAX_README_LINES = 300

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Files of the repository a page names: code, recipes, cluster configs, the paper's pipeline.
CODE_PATH = re.compile(r"(?<![\w/.-])((?:pipeline|stages|tests|bench|recipes|infra|paper)/(?:[\w.-]+/)*[\w-]+\.(?:py|yaml|md))\b")
RUN_MODULE = re.compile(r"python -m (pipeline(?:\.\w+)+)")
DOTTED = re.compile(r"(?<![\w/.-])(pipeline(?:\.[A-Za-z_]\w*)+)")
FROM_IMPORT = re.compile(r"^\s*from (pipeline(?:\.\w+)*) import ([\w, ]+)$", re.M)


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def without_code(text: str) -> str:
    """The text outside fenced code blocks (a link inside code is not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    headings = re.findall(r"^#{1,6} (.+)$", without_code(path.read_text()), flags=re.M)
    return frozenset(slug(h) for h in headings)


@lru_cache(maxsize=None)
def top_level_names(path: Path) -> frozenset[str]:
    """Names a module defines or imports at any depth of its syntax tree (classes, functions,
    assignments, imports): what ``module.name`` in the pages may refer to."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def dotted_problem(name: str) -> str | None:
    """Why ``pipeline.a.b.attr`` names nothing, or None: its longest module prefix must exist and
    the next part, if any, be a name that module defines (a submodule counts as a module)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        found = module_file(".".join(parts[:cut]), ROOT)
        if found is None:
            continue
        if cut == len(parts):
            return None
        if parts[cut] in top_level_names(found):
            return None
        return f"{'.'.join(parts[:cut])} has no {parts[cut]!r}"
    return "no such module"


def test_the_readme_is_read_in_one_sitting():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; at most {MAX_README_LINES}: move reference to docs/"


def test_the_readme_shows_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text(), f"README.md should show CI's test command exactly: {ci}"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in LINK.findall(without_code(README.read_text()))}
    unlinked = [page_id(p) for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"README.md links no {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_leads_somewhere(page):
    broken = []
    for target in LINK.findall(without_code(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {page_id(destination)})")
    assert not broken, f"{page_id(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_code_path_and_module_named_exists(page):
    text = page.read_text()
    missing = [path for path in CODE_PATH.findall(text) if not (ROOT / path).is_file()]
    missing += [f"python -m {m}" for m in RUN_MODULE.findall(text) if module_file(m, ROOT) is None]
    # Page names (docs/pipeline.md) are files, not modules: the link test checks them.
    missing += [f"{name}: {why}" for name in DOTTED.findall(text)
                if not name.endswith(".md") and (why := dotted_problem(name))]
    for module, imported in FROM_IMPORT.findall(text):
        found = module_file(module, ROOT)
        names = [n.strip() for n in imported.split(",") if n.strip()]
        missing += [f"from {module} import {n}" for n in names
                    if found is None or (n not in top_level_names(found) and module_file(f"{module}.{n}", ROOT) is None)]
    assert not missing, f"{page_id(page)} names what does not exist: {missing}"
