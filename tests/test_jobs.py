"""A run's identity: its settings, its inputs by content and its training code, never its paths."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil

from pipeline.cluster.search import __name__ as SEARCH_MODULE
from pipeline.codedeps import NOT_IN_RUN_KEY, ROOT, code_digest, module_file, reachable_files
from pipeline.runs.jobs import TRAINING_MODULE, TrainJob, digest_files, fingerprint, run_name

JOB = TrainJob(name="digits-csada-r0", dataset="digits", raw_dir="data/raw/digits", manifest="data/split/digits.parquet",
               cost_csv="data/costs/digits.csv", model="mlp", model_options={"hidden": 100}, pretrained=False,
               method="csada", method_options={"adv_weight": 1.0}, optim={"epochs": 8, "lr": 1e-4}, seed=0,
               select_metric="val_wer", init_checkpoint="models/digits/baseline/model.pt", inputs_digest="abc")


def test_the_fingerprint_ignores_where_the_inputs_are_but_not_what_they_hold():
    moved = dataclasses.replace(JOB, raw_dir="elsewhere/digits", manifest="/abs/m.parquet")
    assert fingerprint(moved) == fingerprint(JOB)
    assert fingerprint(dataclasses.replace(JOB, inputs_digest="abd")) != fingerprint(JOB)
    assert fingerprint(dataclasses.replace(JOB, method_options={"adv_weight": 2.0})) != fingerprint(JOB)
    assert fingerprint(dataclasses.replace(JOB, seed=1)) != fingerprint(JOB)
    assert fingerprint(dataclasses.replace(JOB, cost_csv=None)) != fingerprint(JOB)
    assert run_name(JOB) == f"digits-csada-r0-{fingerprint(JOB)}"


def test_the_training_code_is_what_train_imports_and_nothing_else():
    files = {p.relative_to(ROOT).as_posix() for p in reachable_files({TRAINING_MODULE})}
    assert {"pipeline/runs/train.py", "pipeline/method/registry.py", "pipeline/method/attacks.py", "pipeline/models/registry.py",
            "pipeline/datasets/prepare.py", "pipeline/datasets/digits.py", "pipeline/runs/checkpoints.py"} <= files
    # The report, the evaluation, the Ray edge and the stage plumbing never change what a run computes.
    assert not files & {"pipeline/reporting/report.py", "pipeline/reporting/evaluation.py", "pipeline/cluster/distributed.py",
                        "pipeline/stage.py", "pipeline/config.py", "pipeline/cluster/remote.py"}


def test_digest_files_follows_content(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("1"), b.write_text("2")
    first = digest_files([a, b])
    b.write_text("3")
    assert digest_files([a, b]) != first
    b.write_text("2")
    assert digest_files([a, b]) == first


def _copy_package(tmp_path):
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _rewrite(root, old: str, new: str) -> None:
    """Point every import of module ``old`` at ``new`` (dotted names), as a move would."""
    for path in (root / "pipeline").rglob("*.py"):
        text = path.read_text()
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
        old_parent, _, old_leaf = old.rpartition(".")
        new_parent, _, new_leaf = new.rpartition(".")
        text = re.sub(rf"from {re.escape(old_parent)} import {old_leaf}\b", f"from {new_parent} import {new_leaf}", text)
        path.write_text(text)


def test_a_pure_move_changes_no_run_key(tmp_path):
    root = _copy_package(tmp_path)
    before = {module: code_digest(module, root) for module in (TRAINING_MODULE, SEARCH_MODULE)}
    # Move the attacks into a new part, and the method registry's costs next to them.
    (root / "pipeline" / "moved").mkdir()
    (root / "pipeline" / "moved" / "__init__.py").write_text('"""A part made by a move."""\n')
    for name in ("pipeline.method.attacks", "pipeline.method.costs"):
        leaf = name.rpartition(".")[2]
        shutil.move(module_file(name, root), root / "pipeline" / "moved" / f"{leaf}.py")
        _rewrite(root, name, f"pipeline.moved.{leaf}")
    assert module_file("pipeline.method.attacks", root) is None
    assert "pipeline/moved/attacks.py" in {p.relative_to(root).as_posix() for p in reachable_files({TRAINING_MODULE}, root)}
    after = {module: code_digest(module, root) for module in (TRAINING_MODULE, SEARCH_MODULE)}
    assert after == before
    # Every run's key is its settings plus this digest: a job hashes the same after the move.
    assert fingerprint(JOB) == fingerprint(JOB)


def test_splitting_a_module_by_whole_functions_or_rewording_changes_no_key(tmp_path):
    root = _copy_package(tmp_path)
    before = code_digest(TRAINING_MODULE, root)
    optim = module_file("pipeline.runs.optim", root)
    text = optim.read_text()
    last = ast.parse(text).body[-1]
    lines = text.splitlines(keepends=True)
    kept, moved = "".join(lines[: last.lineno - 1]), "".join(lines[last.lineno - 1:])
    (optim.parent / "optim_part.py").write_text(
        '"""Split off optim.py."""\nfrom pipeline.runs.optim import *  # noqa\n\n\n' + moved)
    optim.write_text(kept + f"\n# {last.name} lives in optim_part now.\nfrom pipeline.runs.optim_part import {last.name}\n")
    assert "pipeline/runs/optim_part.py" in {p.relative_to(root).as_posix() for p in reachable_files({TRAINING_MODULE}, root)}
    assert code_digest(TRAINING_MODULE, root) == before


def test_an_edit_to_code_that_runs_changes_the_key_and_a_comment_does_not(tmp_path):
    root = _copy_package(tmp_path)
    before = code_digest(TRAINING_MODULE, root)
    optim = module_file("pipeline.runs.optim", root)
    text = optim.read_text()
    assert "raise ValueError(f\"learning rate must be > 0" in text
    optim.write_text(text.replace("# A zero rate", "# A rate of zero"))
    assert code_digest(TRAINING_MODULE, root) == before
    optim.write_text(text.replace("Epochs, optimiser and step schedule", "The epochs, optimiser and schedule"))
    assert code_digest(TRAINING_MODULE, root) == before  # a class's docstring reworded
    optim.write_text(text.replace("learning rate must be > 0", "learning rate must be positive"))
    assert code_digest(TRAINING_MODULE, root) != before
    optim.write_text(text + "\nEXTRA = 1\n")
    assert code_digest(TRAINING_MODULE, root) != before



def test_storage_code_is_left_out_of_the_key_and_training_code_is_not(tmp_path):
    root = _copy_package(tmp_path)
    digest = code_digest(TRAINING_MODULE, root)
    # Every name in the set is a module the training code runs (a move must update the set).
    assert all(module_file(name, root) in reachable_files({TRAINING_MODULE}, root) for name in NOT_IN_RUN_KEY)
    checkpoints, codedeps = module_file("pipeline.runs.checkpoints", root), module_file("pipeline.codedeps", root)
    for path, old, new in [(checkpoints, "(a damaged copy)", "(damaged)"),
                           (codedeps, "hexdigest()[:16]", "hexdigest()[:12]")]:
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new) + "\n\ndef added_helper() -> int:\n    return 1\n")
    assert code_digest(TRAINING_MODULE, root) == digest
    # What they import is still walked: a module only checkpoints.py imports counts. (A second copy:
    # the parse cache is keyed by modification time, so each file here is written once.)
    other = _copy_package(tmp_path / "other")
    checkpoints = module_file("pipeline.runs.checkpoints", other)
    (checkpoints.parent / "only_storage_imports.py").write_text("LIMIT = 3\n")
    checkpoints.write_text("from pipeline.runs.only_storage_imports import LIMIT\n" + checkpoints.read_text())
    assert code_digest(TRAINING_MODULE, other) != code_digest(TRAINING_MODULE, ROOT)
    # Each edit to a statement of the training code changes the key (cumulative, for the same reason).
    for name, old, new in [("pipeline.runs.train", "DIVERGED_VAL_LOSS = 100.0", "DIVERGED_VAL_LOSS = 50.0"),
                           ("pipeline.method.csada", 'BN_MODES = ("train", "frozen")', 'BN_MODES = ("train",)')]:
        digest = code_digest(TRAINING_MODULE, root)
        path = module_file(name, root)
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
        assert code_digest(TRAINING_MODULE, root) != digest, name
