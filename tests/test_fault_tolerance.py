"""Surviving failures on CPU: a killed Ray Train worker, and a fine-tuning stage killed outright.

In both cases no finished epoch is trained again and nothing finished is lost: histories hold
each epoch once, and the ``resumes`` column shows which epochs ran after the restart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import OptimConfig, RayConfig
from pipeline.distributed import run_name, run_training
from pipeline.runner import CHECKPOINT_FILE, CheckpointError, TrainJob, load_checkpoint
from tests.conftest import VENV_BIN, prepare_toy, run, tiny_repository

pytestmark = pytest.mark.slow


def _train_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in command:
            pids.append(int(entry.name))
    return pids


def _latest_epoch(run_dir: Path) -> int:
    """The epoch of the newest readable checkpoint under a Ray run directory (-1 if none)."""
    epochs = [-1]
    for path in run_dir.glob(f"checkpoint_*/{CHECKPOINT_FILE}"):
        try:
            epochs.append(int(load_checkpoint(path)["epoch"]))
        except CheckpointError:
            pass  # being written
    return max(epochs)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_from_the_last_checkpoint(tmp_path, ray_cluster):
    epochs = 40
    job = TrainJob(
        name="toy-kill", dataset="toy", **prepare_toy(tmp_path), model="mlp",
        model_options={}, pretrained=False, method="ap", method_options={"alpha": 1.0},
        optim=dataclasses.asdict(OptimConfig(epochs=epochs, optimizer="adam", lr=0.01, batch_size=8)),
        seed=3, select_metric="val_wer",
    )
    ray_config = RayConfig(address=ray_cluster, num_workers=1, use_gpu=False, storage_path=str(tmp_path / "ray"))
    before = set(_train_worker_pids())
    outcome: dict = {}
    trainer = threading.Thread(target=lambda: outcome.update(trained=run_training(job, ray_config, tmp_path / "out")))
    trainer.start()
    run_dir = tmp_path / "ray" / run_name(job)
    _wait_for(lambda: _latest_epoch(run_dir) >= 3, 180, "three finished epochs")
    # A checkpoint on disk is registered by Ray Train's controller at its next poll (0.25 s):
    # only then is it what a restarted worker resumes from. Leave it a few polls.
    time.sleep(1.5)
    killed = set(_train_worker_pids()) - before
    assert killed, "no Ray Train worker process found"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    trainer.join(timeout=300)
    assert outcome.get("trained") is True

    history = json.loads((tmp_path / "out" / "history.json").read_text())["history"]
    assert [row["epoch"] for row in history] == list(range(epochs))  # every epoch exactly once
    first_resumed = next(row["epoch"] for row in history if row["resumes"] > 0)
    assert first_resumed >= 3  # the epochs finished before the kill were kept, not redone
    assert max(row["resumes"] for row in history) == 1


def test_a_stage_killed_outright_resumes_unfinished_trials_and_skips_finished_ones(tmp_path, ray_cluster):
    work = tmp_path / "repo"
    env = tiny_repository(work, ray_cluster, finetune_epochs=12)
    python = str(VENV_BIN / "python")
    for stage in ("fetch", "split", "costs", "baseline"):
        run([python, f"stages/{stage}.py"], work, env)

    storage = work / "runs" / "ray"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([python, "stages/finetune.py"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)

    def finished_and_unfinished() -> bool:
        finished = list(storage.glob("digits-*-r0-*/outcome/model.pt"))
        unfinished = [d for d in storage.glob("digits-*-r0-*") if not (d / "outcome").exists() and _latest_epoch(d) >= 1]
        return bool(finished) and bool(unfinished)

    try:
        _wait_for(finished_and_unfinished, 300, "one finished trial and one part-way")
        time.sleep(1.0)  # let Ray Train's controller register the part-way trial's checkpoint
    except AssertionError:
        log.flush()
        raise AssertionError((tmp_path / "first.log").read_text()[-3000:]) from None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        log.close()
    finished_before = {
        path.parent.parent.name: path.stat().st_mtime_ns for path in storage.glob("digits-*-r0-*/outcome/model.pt")
    }
    run([python, "stages/finetune.py"], work, env)
    # Judged from the files rather than from log lines, which Ray may fold or drop.
    histories = {
        path.parent.name: json.loads(path.read_text())["history"]
        for path in (work / "models/digits/finetune").glob("*/history.json")
    }
    assert len(histories) == 4
    for history in histories.values():
        assert [row["epoch"] for row in history] == list(range(12))
    assert any(max(row["resumes"] for row in h) >= 1 for h in histories.values())  # one resumed part-way
    # trials that had finished before the kill were reused, not trained again
    for name, mtime in finished_before.items():
        assert (storage / name / "outcome" / "model.pt").stat().st_mtime_ns == mtime
        job_name = name.rsplit("-", 1)[0]
        assert all(row["resumes"] == 0 for row in histories[job_name])
