"""The house a newcomer reads: parts as subpackages, each saying what it owns; small modules and
functions; no import cycles; method code free of Ray, DVC and the data layer; no code outside
the method registry that asks which method it is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.codedeps import PACKAGE_DIR, ROOT, imported_modules, module_name
from pipeline.method.registry import METHODS

MODULES = sorted(PACKAGE_DIR.rglob("*.py"))
PARTS = sorted(p.parent for p in PACKAGE_DIR.glob("*/__init__.py"))
MAX_LOOSE_MODULES, MAX_MODULE_LINES, MAX_FUNCTION_LINES = 12, 450, 80
# Parts that hold pure code: tensors and plain values in and out.
PURE_PARTS = ("pipeline.method", "pipeline.models")
NEVER_IN_PURE = ("ray", "dvc", "pipeline.datasets", "pipeline.runs", "pipeline.cluster", "pipeline.reporting",
                 "pipeline.paper", "pipeline.config")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _name(path: Path) -> str:
    return module_name(path, ROOT)


def test_at_most_twelve_modules_stay_loose_and_every_part_says_what_it_owns():
    loose = [p.name for p in PACKAGE_DIR.glob("*.py")]
    assert len(loose) <= MAX_LOOSE_MODULES, loose
    assert {p.name for p in PARTS} >= {"method", "models", "datasets", "runs", "cluster", "reporting", "paper"}
    for part in PARTS:
        docstring = ast.get_docstring(_tree(part / "__init__.py"))
        assert docstring and len(docstring.split()) >= 20, f"{part.name}/__init__.py needs a docstring"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_modules_and_functions_stay_short(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([d.lineno for d in node.decorator_list], default=node.lineno)
            assert node.end_lineno - first + 1 <= MAX_FUNCTION_LINES, f"{node.name} is too long"


def _graph() -> dict[str, set[str]]:
    names = {_name(p): p for p in MODULES}
    return {name: {m for m in imported_modules(ast.walk(_tree(path)), name, path.name == "__init__.py")
                   if m in names and m != name}
            for name, path in names.items()}


def test_no_import_cycles():
    graph = _graph()
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if node in done:
            return
        for after in sorted(graph[node]):
            visit(after, trail + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def _every_import(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("part", PURE_PARTS)
def test_method_and_model_code_never_imports_ray_dvc_or_the_data_layer(part):
    files = [p for p in MODULES if _name(p).startswith(part)]
    assert files
    for path in files:
        bad = sorted(m for m in _every_import(path) if any(m == n or m.startswith(n + ".") for n in NEVER_IN_PURE))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _method_name_comparisons(path: Path) -> list[int]:
    """Lines that compare something with a registered method's name (``== "csada"``, ``in ("ap", ...)``)."""
    names = set(METHODS)

    def is_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_name(e) for e in node.elts)
        return False

    return [node.lineno for node in ast.walk(_tree(path)) if isinstance(node, ast.Compare)
            and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)) for op in node.ops)
            and any(is_name(side) for side in [node.left, *node.comparators])]


# The registry dispatches by name; the claims page reads CSADA's row by name because the paper's
# claims are about CSADA (a lookup in results, not a choice of what to run).
BY_NAME_ALLOWED = {"pipeline/method/registry.py", "pipeline/paper/claims.py"}


def test_only_the_method_registry_asks_which_method_it_is():
    found = {p.relative_to(ROOT).as_posix(): lines for p in MODULES + sorted((ROOT / "stages").glob("*.py"))
             if p.relative_to(ROOT).as_posix() not in BY_NAME_ALLOWED and (lines := _method_name_comparisons(p))}
    assert not found, f"code that branches on a method's name: {found}"
