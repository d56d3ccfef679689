"""train_func without Ray: checkpoints every epoch, resumption, determinism, checkpoint errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.config import OptimConfig
from pipeline.costs import CostMatrix
from pipeline.runner import (
    CHECKPOINT_FILE,
    CheckpointError,
    LocalSession,
    TrainJob,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    train_func,
)
from tests.conftest import prepare_toy


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory) -> dict[str, str]:
    return prepare_toy(tmp_path_factory.mktemp("toy"))


def job(inputs, method="csada", epochs=3, **changes) -> TrainJob:
    options = dict(adv_weight=1.0, temperature=1.0, eps=1.5, steps=3, step_size=0.05, pairs="stochastic")
    base = TrainJob(
        name=f"toy-{method}", dataset="toy", model="mlp", model_options={}, pretrained=False, method=method,
        method_options=options if method == "csada" else {},
        optim=dataclasses.asdict(OptimConfig(epochs=epochs, optimizer="adam", lr=0.01, batch_size=32)),
        seed=7, select_metric="val_wer", **inputs,
    )
    return dataclasses.replace(base, **changes)


def run(job_: TrainJob, run_dir: Path) -> LocalSession:
    session_dir = Path(run_dir)
    train_func({"job": job_.to_dict(), "run_dir": str(session_dir), "device": "cpu"})
    return LocalSession(session_dir, "cpu")


def final_state(run_dir: Path) -> dict:
    return LocalSession(run_dir, "cpu").resume_state()


def test_every_epoch_is_checkpointed_with_history_and_best(toy_inputs, tmp_path):
    run(job(toy_inputs), tmp_path)
    checkpoints = sorted(tmp_path.glob(f"epoch_*/{CHECKPOINT_FILE}"))
    assert [p.parent.name for p in checkpoints] == ["epoch_0000", "epoch_0001", "epoch_0002"]
    state = final_state(tmp_path)
    assert [row["epoch"] for row in state["history"]] == [0, 1, 2]
    assert {"val_loss", "val_wer", "val_accuracy", "train_loss", "train_adv", "train_n_attacked"} <= set(state["history"][0])
    best = min(state["history"], key=lambda row: (row["val_wer"], row["epoch"]))
    assert state["best"]["epoch"] == best["epoch"]
    # checkpoints are plain tensors and values
    torch.load(checkpoints[-1], weights_only=True)


def test_a_killed_run_resumes_after_its_last_finished_epoch_and_matches_an_uninterrupted_one(toy_inputs, tmp_path):
    complete, interrupted = tmp_path / "complete", tmp_path / "interrupted"
    run(job(toy_inputs, epochs=4), complete)
    run(job(toy_inputs, epochs=4), interrupted)
    for name in ("epoch_0002", "epoch_0003"):  # as if the process died during epoch 2
        (interrupted / name / CHECKPOINT_FILE).unlink()
    train_func({"job": job(toy_inputs, epochs=4).to_dict(), "run_dir": str(interrupted), "device": "cpu"})
    resumed = final_state(interrupted)
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3]
    assert [row["resumes"] for row in resumed["history"]] == [0, 0, 1, 1]  # epochs 0-1 were not redone
    reference = final_state(complete)
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)


def test_same_job_twice_gives_identical_results(toy_inputs, tmp_path):
    first, second = final_state(run(job(toy_inputs), tmp_path / "a").run_dir), None
    second = final_state(run(job(toy_inputs), tmp_path / "b").run_dir)
    assert first["history"] == second["history"]
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key])


def test_fine_tuning_starts_from_the_given_checkpoint(toy_inputs, tmp_path):
    run(job(toy_inputs, method="erm", epochs=2, select_metric="val_loss", cost_csv=None), tmp_path / "base")
    base = final_state(tmp_path / "base")
    init = tmp_path / "base.pt"
    save_checkpoint({"model": base["best"]["model"]}, init)
    run(job(toy_inputs, method="sosr", epochs=1, init_checkpoint=str(init)), tmp_path / "sosr")
    tuned = final_state(tmp_path / "sosr")
    assert "cost_layer.weight" in tuned["model"]  # SOSR's regression head on top of the baseline
    assert tuned["history"][0]["val_accuracy"] > 0.9  # it started from the trained baseline, not from scratch


def test_checkpoint_errors_name_the_file(toy_inputs, tmp_path):
    run(job(toy_inputs, epochs=1), tmp_path)
    good = tmp_path / "epoch_0000" / CHECKPOINT_FILE
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pt cannot be read"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt cannot be read"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    no_model = tmp_path / "no_model.pt"
    torch.save({"epoch": 1}, no_model)
    with pytest.raises(CheckpointError, match="no_model.pt holds no model state dict"):
        load_checkpoint(no_model)
    other_model = torch.nn.Linear(5, 2)
    with pytest.raises(CheckpointError, match=r"epoch_0000/checkpoint.pt does not fit model Linear"):
        load_model_state(other_model, load_checkpoint(good), good)


def test_a_pickled_object_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt cannot be read"):
        load_checkpoint(path)


def test_cost_matrix_for_other_classes_is_refused(toy_inputs, tmp_path):
    wrong = tmp_path / "wrong.csv"
    CostMatrix.single_pair(["a", "b", "c"], "a", "b").save(wrong)
    with pytest.raises(ValueError, match="class"):
        run(job(toy_inputs, cost_csv=str(wrong)), tmp_path / "run")
