"""Which modules of this package a piece of code runs: its import graph, walked statically.

Two users, one walk: a training run's identity hashes the source of every module its training
code imports (:func:`pipeline.jobs.code_digest`), and the tests check that each DVC stage lists
exactly the modules its script imports. Imports inside functions count (a lazy import still
runs); relative imports are resolved against the importing module's package.
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


def source_digest(paths: Iterable[Path], root: Path = ROOT) -> str:
    """sha256 over the relative names and contents of ``paths`` (order-independent)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def code_digest(module: str) -> str:
    """Digest of the source of ``module`` and everything it imports from this package."""
    return source_digest(reachable_files({module}))


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
