"""Checkpoint files and run folders: atomic, weights-only, and clear about what is wrong."""

from __future__ import annotations

import pytest
import torch

from pipeline.runs.checkpoints import (
    CheckpointError,
    RunStore,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)

STATE = {"model": {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.zeros(2)}, "epoch": 4}


def test_checkpoint_errors_name_the_file(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(STATE, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pt cannot be read"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt is not a PyTorch checkpoint, or is damaged") as error:
        load_checkpoint(garbage)
    assert "\n" not in str(error.value) and "file an issue" not in str(error.value)  # torch's own words
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    no_model = tmp_path / "no_model.pt"
    torch.save({"epoch": 1}, no_model)
    with pytest.raises(CheckpointError, match="no_model.pt holds no model state dict"):
        load_checkpoint(no_model)
    with pytest.raises(CheckpointError, match=r"good.pt does not fit model Linear"):
        load_model_state(torch.nn.Linear(5, 2), load_checkpoint(good), good)
    model = torch.nn.Linear(3, 2)
    load_model_state(model, load_checkpoint(good), good)
    assert torch.equal(model.weight, STATE["model"]["weight"])


def test_a_pickled_object_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt holds objects other than tensors and plain values") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and "weights_only=False" not in str(error.value)


def test_a_run_store_keeps_the_latest_state_and_finishes_with_its_outcome(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    assert store.load_state() is None and not store.finished()
    store.save_state({**STATE, "epoch": 1})
    store.save_state(STATE)
    assert store.load_state()["epoch"] == 4
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]  # no partial files
    store.write_outcome(STATE["model"], {"job": {"name": "j"}, "best_epoch": 3, "history": [{"epoch": 0}]})
    assert store.finished()
    store.copy_outcome(tmp_path / "out")
    model = load_checkpoint(tmp_path / "out" / "model.pt")
    assert model["epoch"] == 3 and model["job"] == {"name": "j"}
    assert torch.equal(model["model"]["weight"], STATE["model"]["weight"])


def test_a_run_with_a_model_but_no_history_has_not_finished(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    store.write_outcome(STATE["model"], {"job": {}, "best_epoch": 0, "history": []})
    (tmp_path / "run" / "outcome" / "history.json").unlink()  # killed between the two writes
    assert not store.finished()
