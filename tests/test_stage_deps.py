"""Every dvc.yaml stage lists, as deps, all package code it runs.

DVC reruns a stage only when one of its deps changes. A module the stage imports (directly or
through another module) but does not list would let `dvc repro` keep outputs computed by old
code, so the lists are checked against the imports the stage's step function reaches.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def _module_file(name: str) -> Path | None:
    if name.split(".")[0] != PACKAGE:
        return None
    base = REPO.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_names(nodes) -> set[str]:
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if _module_file(name) is not None}


def _reachable_files(start: set[str]) -> set[Path]:
    """Files of every package module imported, at any depth, from ``start`` (parents included)."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_imported_names(ast.walk(ast.parse(path.read_text()))))
    return seen


def _as_dep(path: Path) -> str:
    relative = path.relative_to(REPO)
    if len(relative.parts) > 2:  # a subpackage: dvc.yaml lists its directory
        return "/".join(relative.parts[:2])
    return str(relative)


STEPS = REPO / PACKAGE / "steps.py"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_every_module_the_stage_runs(stage):
    tree = ast.parse(STEPS.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert stage in functions, f"pipeline.steps has no function for stage {stage!r}"
    module_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    # Of steps.py itself only what this stage's function (and the module's top level) imports;
    # other modules are walked whole, lazy imports inside their functions included.
    names = _imported_names(list(ast.walk(functions[stage])) + module_level)
    needed = {_as_dep(path) for path in _reachable_files(names)} | {f"{PACKAGE}/steps.py"}
    needed -= {f"{PACKAGE}/__init__.py"}
    missing = sorted(needed - set(STAGES[stage]["deps"]))
    assert not missing, f"dvc.yaml stage {stage!r} runs {missing} but does not list them as deps"


def test_the_import_walk_finds_indirect_imports():
    # pipeline.attacks imports pipeline.fusion; pipeline.methods imports pipeline.attacks.
    reached = {_as_dep(path) for path in _reachable_files({"pipeline.methods"})}
    assert {"pipeline/methods.py", "pipeline/attacks.py", "pipeline/fusion.py"} <= reached
