"""A run's identity: its settings, its inputs by content and its training code, never its paths."""

from __future__ import annotations

import dataclasses

from pipeline.codedeps import ROOT, reachable_files
from pipeline.jobs import TRAINING_MODULE, TrainJob, digest_files, fingerprint, run_name

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
    assert {"pipeline/train.py", "pipeline/methods.py", "pipeline/attacks.py", "pipeline/models.py",
            "pipeline/prepare.py", "pipeline/datasets/digits.py", "pipeline/checkpoints.py"} <= files
    # The report, the evaluation, the Ray edge and the stage plumbing never change what a run computes.
    assert not files & {"pipeline/report.py", "pipeline/evaluation.py", "pipeline/distributed.py",
                        "pipeline/stage.py", "pipeline/config.py", "pipeline/remote.py"}


def test_digest_files_follows_content(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("1"), b.write_text("2")
    first = digest_files([a, b])
    b.write_text("3")
    assert digest_files([a, b]) != first
    b.write_text("2")
    assert digest_files([a, b]) == first
