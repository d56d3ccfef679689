"""Which modules of this package a piece of code runs: its import graph, walked statically.

Two users, one walk: a training run's identity hashes the code of every module its training
code imports (:func:`code_digest`), and the tests check that each DVC stage lists exactly the
modules its script imports. Imports inside functions count (a lazy import still runs); relative
imports are resolved against the importing module's package.

The run key hashes what the code *does*, not where it lives: each module's top-level statements
as syntax trees, with import statements, docstrings, ``__all__`` and comments left out, pooled
over all the modules as a sorted multiset. Moving or renaming a module, splitting one into two
by whole functions or classes, editing a comment or a docstring: none of these changes a key,
so none retrains a run. Any change to a statement that runs does, with one declared exception.

The modules in :data:`NOT_IN_RUN_KEY` are walked (what they import counts as usual) but their own
statements are left out of the key: they only store, verify or name bytes (checkpoint files and
their checksums, this key machinery itself) and never decide what a run computes. That is sound
because what they touch is guarded by other means: a resumed run is tested to equal an
uninterrupted one (tests/test_train.py), a checkpoint is resumed only when its sha256 matches the
one written with it, and a finished outcome is reused only when its sha256 matches the one its
history recorded. So better storage, verification or key code retrains nothing. The cost: a real
bug in one of them (say, checkpoint loading that drops a tensor) would not retrain finished runs
by itself; fixing such a bug must come with discarding the runs it touched. Moving such a module
(or moving code that decides weights into one) needs this set updated too; tests/test_jobs.py
checks that every name in it is a module.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
# Modules whose own statements do not enter a run key (module doc): storage and the key itself.
NOT_IN_RUN_KEY = frozenset({f"{PACKAGE}.runs.checkpoints", f"{PACKAGE}.codedeps"})


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of package module ``name`` (``pipeline.x`` or ``pipeline.sub``), if any."""
    if name.split(".")[0] != PACKAGE:
        return None
    base = root.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = importer.split(".")
    package = package if is_package else package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(nodes: Iterable[ast.AST], importer: str = "", is_package: bool = False,
                     root: Path = ROOT) -> set[str]:
    """Package modules named by the import statements among ``nodes`` (``from a import b``
    counts ``a`` and, where it is a module, ``a.b``)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, is_package)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if module_file(name, root) is not None}


def reachable_files(modules: Iterable[str], root: Path = ROOT) -> set[Path]:
    """Source files of ``modules`` and of every package module they import, at any depth
    (parent packages included: importing ``a.b`` runs ``a/__init__.py``)."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = module_file(name, root)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_file_imports(path, path.stat().st_mtime_ns, root))
    return seen


@lru_cache(maxsize=None)
def _file_imports(path: Path, mtime_ns: int, root: Path) -> frozenset[str]:
    """The package modules one file imports (cached per version of the file)."""
    del mtime_ns  # part of the cache key: an edited file is parsed again
    return frozenset(imported_modules(ast.walk(ast.parse(path.read_text())), module_name(path, root),
                                      path.name == "__init__.py", root))


class _WithoutImportsAndDocs(ast.NodeTransformer):
    """Drops what a move or a rewording changes but what the code does not: import statements
    (at any depth: a lazy import names a module path) and docstrings."""

    def visit_Import(self, node: ast.Import) -> None:
        return None

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        return None

    def _body_without_docstring(self, node: ast.AST) -> ast.AST:
        body = node.body  # type: ignore[attr-defined]
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:]  # type: ignore[attr-defined]
        return self.generic_visit(node)

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _body_without_docstring


def _is_export_list(node: ast.stmt) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in targets)


@lru_cache(maxsize=None)
def _statement_digests(path: Path, mtime_ns: int) -> tuple[str, ...]:
    """sha256 of each top-level statement of one file, as a syntax tree without imports and
    docstrings (cached per version of the file)."""
    del mtime_ns  # part of the cache key
    tree = _WithoutImportsAndDocs().visit(ast.parse(path.read_text()))
    return tuple(hashlib.sha256(ast.dump(node).encode()).hexdigest()
                 for node in tree.body if not _is_export_list(node))


def source_digest(paths: Iterable[Path]) -> str:
    """sha256 over the statements of ``paths`` as a sorted multiset: independent of the files'
    names, of their order and of which file holds which function (module doc)."""
    statements = sorted(d for path in set(paths) for d in _statement_digests(path, path.stat().st_mtime_ns))
    return hashlib.sha256("\n".join(statements).encode()).hexdigest()[:16]


def code_digest(module: str, root: Path = ROOT) -> str:
    """Digest of the code of ``module`` and of everything it imports from this package, less the
    statements of the modules in :data:`NOT_IN_RUN_KEY` (their imports are still followed)."""
    left_out = {module_file(name, root) for name in NOT_IN_RUN_KEY}
    return source_digest(reachable_files({module}, root) - left_out)


def stage_files(script: Path, root: Path = ROOT) -> list[Path]:
    """The stage script and every package module it imports (the files under ``root``), sorted."""
    modules = imported_modules(ast.walk(ast.parse(script.read_text())), root=root)
    return sorted({script, *reachable_files(modules, root)})


def stage_manifest(script: Path, root: Path = ROOT) -> str:
    """The text of a stage's code manifest: one ``path sha256`` line per file it runs."""
    lines = [f"# The code stage '{script.stem}' runs: its script and every package module it imports,",
             "# with their sha256. The stage depends on this file, so it re-runs when one of them changes.",
             *(f"{path.relative_to(root).as_posix()} {hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
               for path in stage_files(script, root))]
    return "\n".join(lines) + "\n"
