"""Every dvc.yaml stage lists exactly the code and the params it reads: nothing missing, nothing extra.

DVC reruns a stage only when one of its deps changes. A module or param the stage reads but does
not list lets `dvc repro` keep outputs computed from old code or old values; one it lists but
never reads reruns it (and retrains models) for nothing. So both are derived here from the stage
scripts and compared with dvc.yaml:

* code: each stage depends on its manifest code/<stage>.txt, which its project's `code` stage
  writes from the package modules the script imports, at any depth (pipeline.codedeps); the root
  and paper/ are separate DVC projects, each with its own `code` stage and code/ folder;
* params: the `config.<field>...` chains each script reads, mapped through
  `pipeline.config.PARAM_SOURCES` to params.yaml keys (both sides expanded to the leaves of
  params.yaml) and to the recipe file, which is a file dependency. Settings that only decide where
  runs execute (`EXECUTION_ONLY`) are not params.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.codedeps import (
    imported_modules,
    reachable_files,
    stage_files,
    stage_manifest,
)
from pipeline.config import EXECUTION_ONLY, PARAM_SOURCES, RECIPE_DIR, USER_FILE_FOLDERS
from pipeline.errors import UserError
from stages.code import stage_scripts

REPO = Path(__file__).resolve().parents[1]
RECIPE_FILE = f"{RECIPE_DIR}/${{dataset}}.yaml"


@dataclass(frozen=True)
class Pipeline:
    """A dvc.yaml, its params file, and how its paths reach the project's code and recipes."""

    name: str
    stages: Mapping[str, Any]
    params: Mapping[str, Any]
    folder: Path  # where its dvc.yaml is, and where DVC runs its stages
    up: str  # "" at the root; "../" for paper/, a DVC project of its own, whose stages run in paper/

    @classmethod
    def load(cls, folder: str) -> Pipeline:
        root = REPO / folder
        return cls(folder or "root", yaml.safe_load((root / "dvc.yaml").read_text())["stages"],
                   yaml.safe_load((root / "params.yaml").read_text()), root, "../" if folder else "")

    @property
    def runs(self) -> list[str]:
        """Stages that run a project script (all but `code`)."""
        return sorted(set(self.stages) - {"code"})

    def script(self, stage: str) -> str:
        return self.stages[stage]["cmd"].split()[1].removeprefix(self.up).removeprefix("stages/").removesuffix(".py")


MAIN, PAPER = Pipeline.load(""), Pipeline.load("paper")
STAGES, PARAMS = MAIN.stages, MAIN.params
PIPELINE = MAIN.runs
CASES = [(pipeline, stage) for pipeline in (MAIN, PAPER) for stage in pipeline.runs]
IDS = [f"{pipeline.name}:{stage}" for pipeline, stage in CASES]


def _script(stage: str) -> ast.Module:
    return ast.parse((REPO / "stages" / f"{stage}.py").read_text())


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def code_needed(stage: str) -> set[str]:
    """The script and every package module it imports, walked here from the script's own imports."""
    return {f"stages/{stage}.py"} | {_relative(p) for p in reachable_files(imported_modules(ast.walk(_script(stage))))}


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


def _sources(chain: tuple[str, ...], params: Mapping[str, Any] = PARAMS) -> tuple[str, ...]:
    if len(chain) > 1 and ".".join(chain[:2]) in PARAM_SOURCES:
        return PARAM_SOURCES[".".join(chain[:2])]
    sources = PARAM_SOURCES[chain[0]]
    if len(chain) > 1 and len(sources) == 1 and isinstance(params.get(sources[0]), Mapping):
        return (f"{sources[0]}.{chain[1]}",)  # one field of a params section (data, ray)
    return sources


def _leaves(tree: object, prefix: str) -> set[str]:
    if isinstance(tree, Mapping) and tree:
        return set().union(*(_leaves(v, f"{prefix}.{k}") for k, v in tree.items()))
    return {prefix}


def _expand(key: str, params: Mapping[str, Any] = PARAMS) -> set[str]:
    """A params.yaml key as the set of leaves it covers: ``ray`` -> ray.address, ray.num_workers, ..."""
    tree = params
    for part in key.split("."):
        tree = tree[part] if isinstance(tree, Mapping) and part in tree else None
    return _leaves(tree, key)


def reads(script: str, params: Mapping[str, Any] = PARAMS) -> set[str]:
    return {key for chain in _chains(_script(script)) for key in _sources(chain, params)}


def params_read(script: str, params: Mapping[str, Any] = PARAMS) -> set[str]:
    return set().union(*(_expand(key, params) for key in reads(script, params) - {"recipe"})) - EXECUTION_ONLY


def params_declared(pipeline: Pipeline, stage: str) -> set[str]:
    entries = pipeline.stages[stage].get("params", [])
    assert all(isinstance(entry, str) for entry in entries), f"stage {stage!r}: params come from params.yaml only"
    return set().union(*(_expand(key, pipeline.params) for key in entries))


@pytest.mark.parametrize(("pipeline", "stage"), CASES, ids=IDS)
def test_stage_depends_on_its_code_manifest_which_lists_exactly_its_code(pipeline, stage):
    script = pipeline.script(stage)
    deps = pipeline.stages[stage]["deps"]
    assert f"code/{script}.txt" in deps  # its own project's manifest (paper/code/ for paper/)
    assert not [d for d in deps if d.removeprefix(pipeline.up).startswith(("pipeline", "stages"))], (
        "code is listed through the manifest")
    path = REPO / "stages" / f"{script}.py"
    listed = [line.split()[0] for line in stage_manifest(path).splitlines() if not line.startswith("#")]
    assert listed == sorted(code_needed(script))
    assert listed == [_relative(p) for p in stage_files(path)]


@pytest.mark.parametrize("pipeline", [MAIN, PAPER], ids=["root", "paper"])
def test_each_project_s_code_stage_reads_all_code_and_writes_the_manifests_of_its_stages(pipeline):
    code = pipeline.stages["code"]
    assert code["cmd"] == f"python {pipeline.up}stages/code.py"
    assert sorted(code["deps"]) == [f"{pipeline.up}pipeline", f"{pipeline.up}stages"]
    assert code["outs"] == [{"code": {"cache": False, "persist": True}}]
    written = stage_scripts(pipeline.folder / "dvc.yaml", REPO)
    assert [path.stem for path in written] == pipeline.runs == sorted(pipeline.script(stage) for stage in pipeline.runs)


def test_every_stage_script_runs_in_a_pipeline():
    scripts = {p.stem for p in (REPO / "stages").glob("*.py")} - {"__init__", "code"}
    assert scripts == {pipeline.script(stage) for pipeline, stage in CASES}
    assert set(PAPER.stages) >= {"fetch", "split", "costs"}, "the experiments prepare their data as the pipeline does"


def test_the_code_stage_refuses_a_stage_it_cannot_follow(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: bash train.sh\n")
    with pytest.raises(UserError, match=r"dvc.yaml: stage 'train' runs 'bash train.sh'; valid: 'python <path to "):
        stage_scripts(tmp_path / "dvc.yaml", REPO)
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python elsewhere/stages/train.py\n")
    with pytest.raises(UserError, match=r"stage 'train' runs 'python elsewhere/stages/train.py'"):
        stage_scripts(tmp_path / "dvc.yaml", REPO)


@pytest.mark.parametrize(("pipeline", "stage"), CASES, ids=IDS)
def test_stage_lists_exactly_the_params_it_reads(pipeline, stage):
    script = pipeline.script(stage)
    assert not _bare_config_uses(_script(script)), (
        f"stages/{script}.py passes `config` on whole (lines {_bare_config_uses(_script(script))}); "
        "pass the fields a function needs, so that what the stage reads can be seen")
    read, declared = params_read(script, pipeline.params), params_declared(pipeline, stage)
    assert not read - declared, f"{pipeline.name} stage {stage!r} reads {sorted(read - declared)} but does not declare them"
    assert not declared - read, f"{pipeline.name} stage {stage!r} declares {sorted(declared - read)} but never reads them"
    uses_recipe = "recipe" in reads(script, pipeline.params)
    assert (pipeline.up + RECIPE_FILE in pipeline.stages[stage]["deps"]) == uses_recipe, (
        f"{pipeline.name} stage {stage!r} {'reads' if uses_recipe else 'does not read'} {RECIPE_FILE}")


# The stage that reads the contents of the file each such param names (others may read its name).
USER_FILE_READERS = {"data.source": "fetch", "costs.file": "costs"}


@pytest.mark.parametrize("pipeline", [MAIN, PAPER], ids=["root", "paper"])
def test_the_stage_reading_a_user_file_depends_on_its_folder(pipeline):
    # A param naming a user's file (costs.file, data.source) makes its folder a dependency of the
    # stage that reads the file: an edit to the file re-runs it. The config refuses files elsewhere.
    assert set(USER_FILE_READERS) == set(USER_FILE_FOLDERS)
    for key, folder in USER_FILE_FOLDERS.items():
        reader = USER_FILE_READERS[key]
        assert key in params_read(reader, pipeline.params)
        listing = sorted(stage for stage in pipeline.stages if folder in pipeline.stages[stage].get("deps", []))
        assert listing == [reader], f"{pipeline.name}: {folder} is a dependency of {listing}, expected [{reader!r}]"
        # The folder ships with the project (a README in it), so the dependency always exists.
        assert (REPO / ("paper" if pipeline.up else "") / folder).is_dir()


def test_the_import_walk_finds_indirect_and_relative_imports():
    # pipeline.method.registry imports pipeline.method.attacks, which imports pipeline.method.fusion; the datasets
    # package imports its modules relatively.
    reached = {_relative(path) for path in reachable_files({"pipeline.method.registry"})}
    assert {"pipeline/method/registry.py", "pipeline/method/attacks.py", "pipeline/method/fusion.py"} <= reached
    files = {_relative(p) for p in reachable_files({"pipeline.datasets"})}
    assert {"pipeline/datasets/toy.py", "pipeline/datasets/adapter.py", "pipeline/fileio.py"} <= files


def test_the_params_reading_walk_sees_sections_fields_and_the_recipe():
    tree = ast.parse("def main(config):\n    f(config.ray, config.data.source, config.model, config.paths.raw.name)\n")
    assert _chains(tree) == {("ray",), ("data", "source"), ("model",), ("paths", "raw", "name")}
    assert _sources(("data", "source")) == ("data.source",)
    assert _sources(("data", "val_fraction")) == ("recipe",)
    assert _sources(("paths", "raw", "name")) == ("dataset",)
    assert "ray.num_workers" in _expand("ray") and _expand("baseline") == {"baseline"}
    assert reads("report") >= {"recipe", "finetune.replications"}
    assert _bare_config_uses(ast.parse("def main(config):\n    g(config)\n")) == [2]
    assert _bare_config_uses(ast.parse("def g(config):\n    config.seed\ndef main(config):\n    g(config)\n")) == []


def test_the_report_rendering_is_code_of_the_report_stage_alone():
    # An edit to how the report is rendered must not re-run the evaluation or retrain anything.
    users = [stage for stage in PIPELINE if "pipeline/reporting/report.py" in code_needed(stage)]
    assert users == ["report"]
