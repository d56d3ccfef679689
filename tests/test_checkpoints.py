"""Checkpoint files and run folders: atomic, weights-only, and clear about what is wrong."""

from __future__ import annotations

import io
import json

import pytest
import torch

from pipeline.runs.checkpoints import (
    CHECKPOINT_FILE,
    CHECKSUM_FILE,
    CheckpointError,
    RunStore,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from tests.fakes import flip_bit_in_tensor

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
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_FILE, CHECKSUM_FILE]  # no partials
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


KNOWN = torch.tensor([0.25, -1.5, 12345.678, 3.0])
JOB = {"name": "j", "seed": 0}


def test_a_bit_flipped_inside_a_tensor_loads_silently_but_is_never_resumed(tmp_path):
    RunStore(str(tmp_path / "run")).save_state({"model": {"w": KNOWN}, "epoch": 2, "job": JOB})
    path = tmp_path / "run" / CHECKPOINT_FILE
    damaged = flip_bit_in_tensor(path.read_bytes(), KNOWN, index=2)
    path.write_bytes(damaged)
    # Why the checksum: torch checks no CRC, so the damaged file loads with one value changed.
    silently = torch.load(io.BytesIO(damaged), map_location="cpu", weights_only=True)["model"]["w"]
    assert silently[2] != KNOWN[2] and torch.equal(silently[[0, 1, 3]], KNOWN[[0, 1, 3]])
    store = RunStore(str(tmp_path / "run"))
    assert store.state_problem(JOB) == f"{path} differs from the checksum written with it (a damaged copy)"
    with pytest.raises(CheckpointError, match="differs from the checksum written with it"):
        store.load_state()
    store.discard()
    assert list((tmp_path / "run").iterdir()) == [] and store.state_problem(JOB) is None


def test_an_intact_checkpoint_resumes_and_one_without_its_checksum_is_discarded(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    store.save_state({"model": {"w": -KNOWN}, "epoch": 1, "job": JOB})
    store.save_state({"model": {"w": KNOWN}, "epoch": 2, "job": JOB})
    reader = RunStore(str(tmp_path / "run"))  # a restarted stage
    assert reader.state_problem(JOB) is None
    assert torch.equal(reader.load_state()["model"]["w"], KNOWN)
    (tmp_path / "run" / CHECKSUM_FILE).write_text("{not json")
    assert reader.state_problem(JOB) == (f"the checksum beside {tmp_path / 'run' / CHECKPOINT_FILE} "
                                         f"({CHECKSUM_FILE}) cannot be read (JSONDecodeError)")
    (tmp_path / "run" / CHECKSUM_FILE).unlink()  # as a checkpoint saved before checksums
    assert reader.state_problem(JOB).startswith(f"{tmp_path / 'run' / CHECKPOINT_FILE} has no checksum beside it")
    reader.discard()
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    # A migration records the checksum of a checkpoint that predates them.
    save_checkpoint({"model": {"w": KNOWN}, "job": JOB}, tmp_path / "old" / CHECKPOINT_FILE)
    old = RunStore(str(tmp_path / "old"))
    assert "has no checksum" in old.state_problem(JOB)
    assert old.record_state_checksum() and old.state_problem(JOB) is None
    assert not RunStore(str(tmp_path / "none")).record_state_checksum()


def test_a_crash_between_the_checksum_and_the_checkpoint_resumes_the_previous_one(tmp_path, monkeypatch):
    store = RunStore(str(tmp_path / "run"))
    store.save_state({"model": {"w": -KNOWN}, "epoch": 1, "job": JOB})
    written = store._write

    def killed_before_the_checkpoint(data: bytes, *parts: str) -> None:
        if parts == (CHECKPOINT_FILE,):
            raise KeyboardInterrupt  # the process dies between the two writes
        written(data, *parts)

    monkeypatch.setattr(store, "_write", killed_before_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        store.save_state({"model": {"w": KNOWN}, "epoch": 2, "job": JOB})
    sums = json.loads((tmp_path / "run" / CHECKSUM_FILE).read_text())
    assert sums["replaced_sha256"] is not None  # the new checksum was written
    restarted = RunStore(str(tmp_path / "run"))
    assert restarted.state_problem(JOB) is None
    resumed = restarted.load_state()
    assert resumed["epoch"] == 1 and torch.equal(resumed["model"]["w"], -KNOWN)
    # Only the checkpoint in place and the one it replaced are accepted: two saves on, the epoch-1
    # file put back is refused.
    epoch_1 = (tmp_path / "run" / CHECKPOINT_FILE).read_bytes()
    restarted.save_state({"model": {"w": KNOWN}, "epoch": 2, "job": JOB})
    restarted.save_state({"model": {"w": KNOWN * 2}, "epoch": 3, "job": JOB})
    assert RunStore(str(tmp_path / "run")).load_state()["epoch"] == 3
    (tmp_path / "run" / CHECKPOINT_FILE).write_bytes(epoch_1)
    assert "differs from the checksum" in RunStore(str(tmp_path / "run")).state_problem(JOB)
