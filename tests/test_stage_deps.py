"""Every dvc.yaml stage lists exactly the code and the params it reads: nothing missing, nothing extra.

DVC reruns a stage only when one of its deps changes. A module or param the stage reads but does
not list lets `dvc repro` keep outputs computed from old code or old values; one it lists but
never reads reruns it (and retrains models) for nothing. So both lists are derived here from the
stage scripts and compared with dvc.yaml:

* code: the package modules each `stages/<name>.py` imports, at any depth (pipeline.codedeps);
* params: the `config.<field>...` chains each script reads, mapped to params keys through
  `pipeline.config.PARAM_SOURCES`, and both sides expanded to the leaves of params.yaml and of the
  digits recipe. Settings that only decide where runs execute (`EXECUTION_ONLY`) are not params.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from pipeline.codedeps import imported_modules, reachable_files
from pipeline.config import EXECUTION_ONLY, PARAM_SOURCES, RECIPE_DIR

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
RECIPE_FILE = f"{RECIPE_DIR}/${{dataset}}.yaml"
RECIPE = yaml.safe_load((REPO / RECIPE_DIR / f"{PARAMS['dataset']}.yaml").read_text())


def _script(stage: str) -> ast.Module:
    return ast.parse((REPO / "stages" / f"{stage}.py").read_text())


def _as_dep(path: Path) -> str | None:
    relative = path.relative_to(REPO)
    if relative.parts == ("pipeline", "__init__.py"):
        return None
    return "/".join(relative.parts[:2]) if len(relative.parts) > 2 else relative.as_posix()  # subpackage: its folder


def code_needed(stage: str) -> set[str]:
    files = reachable_files(imported_modules(ast.walk(_script(stage))))
    return {f"stages/{stage}.py"} | {dep for dep in map(_as_dep, files) if dep is not None}


def code_declared(stage: str) -> set[str]:
    return {dep for dep in STAGES[stage]["deps"] if dep.startswith(("pipeline", "stages"))}


def _chains(tree: ast.Module) -> set[tuple[str, ...]]:
    """Attribute chains rooted at the name ``config`` (``config.data.source`` -> (data, source))."""
    chains, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                inner.add(id(value))
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "config" and id(node) not in inner:
                chains.add(tuple(reversed(parts)))
    return chains


def _bare_config_uses(tree: ast.Module) -> list[int]:
    """Lines where ``config`` is passed on whole to code outside the script, which would hide
    what is read (the script's own helpers are walked with it)."""
    local = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    seen = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    seen |= {id(arg) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in local for arg in n.args}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "config" and id(n) not in seen]


def _sources(chain: tuple[str, ...]) -> tuple[str, ...]:
    if len(chain) > 1 and ".".join(chain[:2]) in PARAM_SOURCES:
        return PARAM_SOURCES[".".join(chain[:2])]
    sources = PARAM_SOURCES[chain[0]]
    if len(chain) > 1 and len(sources) == 1 and isinstance(PARAMS.get(sources[0]), Mapping):
        return (f"{sources[0]}.{chain[1]}",)  # one field of a params section (data, ray)
    return sources


def _leaves(tree: object, prefix: str) -> set[str]:
    if isinstance(tree, Mapping) and tree:
        return set().union(*(_leaves(v, f"{prefix}.{k}") for k, v in tree.items()))
    return {prefix}


def _expand(key: str) -> set[str]:
    """A params key as the set of leaves it covers: ``ray`` -> ray.address, ray.num_workers, ..."""
    if key.startswith("recipe:"):
        tree, parts, file = RECIPE, key.removeprefix("recipe:").split("."), RECIPE_FILE
    else:
        tree, parts, file = PARAMS, key.split("."), "params.yaml"
    for part in parts:
        tree = tree[part] if isinstance(tree, Mapping) and part in tree else None
    return {f"{file}:{leaf}" for leaf in _leaves(tree, ".".join(parts))}


def params_read(stage: str) -> set[str]:
    read = set().union(*(_expand(key) for chain in _chains(_script(stage)) for key in _sources(chain)))
    return read - {f"params.yaml:{key}" for key in EXECUTION_ONLY}


def params_declared(stage: str) -> set[str]:
    keys = []
    for entry in STAGES[stage].get("params", []):
        if isinstance(entry, str):
            keys.append(entry)
        else:
            [(file, names)] = entry.items()
            assert file == RECIPE_FILE, f"stage {stage!r}: unexpected params file {file}"
            keys += [f"recipe:{name}" for name in names]
    return set().union(*(_expand(key) for key in keys))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_lists_exactly_the_code_it_runs(stage):
    needed, declared = code_needed(stage), code_declared(stage)
    assert not needed - declared, f"dvc.yaml stage {stage!r} runs {sorted(needed - declared)} but does not list them"
    assert not declared - needed, f"dvc.yaml stage {stage!r} lists {sorted(declared - needed)} but never runs them"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_lists_exactly_the_params_it_reads(stage):
    assert not _bare_config_uses(_script(stage)), (
        f"stages/{stage}.py passes `config` on whole (lines {_bare_config_uses(_script(stage))}); "
        "pass the fields a function needs, so that what the stage reads can be seen")
    read, declared = params_read(stage), params_declared(stage)
    assert not read - declared, f"dvc.yaml stage {stage!r} reads {sorted(read - declared)} but does not declare them"
    assert not declared - read, f"dvc.yaml stage {stage!r} declares {sorted(declared - read)} but never reads them"


def test_the_import_walk_finds_indirect_and_relative_imports():
    # pipeline.methods imports pipeline.attacks, which imports pipeline.fusion; the datasets
    # package imports its modules relatively.
    reached = {_as_dep(path) for path in reachable_files({"pipeline.methods"})}
    assert {"pipeline/methods.py", "pipeline/attacks.py", "pipeline/fusion.py"} <= reached
    files = {p.relative_to(REPO).as_posix() for p in reachable_files({"pipeline.datasets"})}
    assert {"pipeline/datasets/toy.py", "pipeline/datasets/adapter.py", "pipeline/fileio.py"} <= files


def test_the_params_reading_walk_sees_sections_fields_and_recipe_keys():
    tree = ast.parse("def main(config):\n    f(config.ray, config.data.source, config.model, config.paths.raw.name)\n")
    assert _chains(tree) == {("ray",), ("data", "source"), ("model",), ("paths", "raw", "name")}
    assert _sources(("data", "source")) == ("data.source",)
    assert _sources(("paths", "raw", "name")) == ("dataset", "data.root")
    assert "params.yaml:ray.num_workers" in _expand("ray")
    assert _expand("recipe:model") == {f"{RECIPE_FILE}:model"}
    assert _bare_config_uses(ast.parse("def main(config):\n    g(config)\n")) == [2]
    assert _bare_config_uses(ast.parse("def g(config):\n    config.seed\ndef main(config):\n    g(config)\n")) == []
