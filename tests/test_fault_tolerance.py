"""Surviving failures on CPU: a killed trial process, a stage killed outright, a run that diverges
(trained alone and with DDP), a stage interrupted with Ctrl-C, and a cluster that goes away
(someone else's, or the one joined). A DDP run that trains to its end is tests/test_multinode.py's.

In each case no finished epoch is trained again and nothing finished is lost: histories hold each
epoch once, and the ``resumes`` column shows which epochs ran after the restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cluster.distributed import (
    RunFailedError,
    run_jobs,
    run_location,
    storage_root,
)
from pipeline.config import RayConfig
from pipeline.runs.checkpoints import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    OUTCOME_DIR,
    CheckpointError,
    RunStore,
    load_checkpoint,
)
from pipeline.runs.jobs import TrainJob, run_name
from pipeline.runs.optim import OptimConfig
from tests.conftest import (
    REPO,
    TINY_METHODS,
    VENV_BIN,
    _free_port,
    _stop_processes_mentioning,
    prepare_finetune,
    prepare_toy,
    run,
    tiny_repository,
)

# One xdist worker runs these (and the slow S3 tests) one after the other on its own Ray cluster,
# beside the end-to-end tests.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _pids(marker: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in command:
            pids.append(int(entry.name))
    return pids


def _latest_epoch(run_dir: Path) -> int:
    """The epoch of the run's readable checkpoint (-1 if none yet)."""
    try:
        return int(load_checkpoint(run_dir / CHECKPOINT_FILE)["epoch"])
    except CheckpointError:
        return -1


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _toy_job(project: Path, epochs: int, **changes) -> TrainJob:
    return TrainJob(
        name="toy-kill", dataset="toy", **prepare_toy(project), model="mlp", model_options={}, pretrained=False,
        method="ap", method_options={"alpha": 1.0},
        optim=dataclasses.asdict(OptimConfig(epochs=epochs, optimizer="adam", lr=0.01, batch_size=8)),
        seed=3, select_metric="val_wer", **changes,
    )


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / OUTCOME_DIR / HISTORY_FILE).read_text())["history"]


def test_a_killed_trial_is_retried_from_its_last_checkpoint(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setenv("CSADA_CHECKPOINT_INTERVAL_S", "0")  # a checkpoint after every epoch
    epochs = 40
    job = _toy_job(tmp_path, epochs)
    ray_config = RayConfig(address=ray_cluster, num_workers=1, use_gpu=False, storage_path="runs")
    before = set(_pids(b"ray::ImplicitFunc"))
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["stores"] = run_jobs([job], ray_config, tmp_path, experiment="kill")
        except BaseException as error:  # reported by the main thread
            outcome["error"] = error

    trainer = threading.Thread(target=train)
    trainer.start()
    run_dir = Path(run_location(storage_root(ray_config, tmp_path), job))
    _wait_for(lambda: _latest_epoch(run_dir) >= 3 or "error" in outcome, 180, "three finished epochs")
    assert "error" not in outcome, repr(outcome.get("error"))
    killed = set(_pids(b"ray::ImplicitFunc")) - before
    assert killed, "no Ray Tune trial process found"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    trainer.join(timeout=300)
    assert outcome.get("stores") and outcome["stores"][0].finished(), sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "runs/kill" not in str(p))

    history = _history(run_dir)
    assert [row["epoch"] for row in history] == list(range(epochs))  # every epoch exactly once
    first_resumed = next(row["epoch"] for row in history if row["resumes"] > 0)
    assert first_resumed >= 3  # the epochs finished before the kill were kept, not redone
    assert max(row["resumes"] for row in history) == 1


def test_a_run_that_diverges_is_not_retried_and_fails_with_one_line(tmp_path, ray_cluster):
    # A user error inside a trial (here: divergence at lr 1e10) fails the same way on every retry,
    # so the trial hands its message back instead of raising: Ray records no error, retries nothing.
    diverging = dataclasses.replace(_toy_job(tmp_path, epochs=3), name="toy-diverge", optim=dataclasses.asdict(
        OptimConfig(epochs=3, optimizer="sgd", lr=1e10, batch_size=8)))
    for workers, cpus in ((1, 1.0), (2, 0.5)):  # a trial training itself, and a DDP TorchTrainer
        ray_config = RayConfig(address=ray_cluster, num_workers=workers, cpus_per_worker=cpus, use_gpu=False,
                               storage_path="runs")
        with pytest.raises(RunFailedError, match=r"^run toy-diverge diverged at epoch 1 \(.*\) with sgd lr 1e\+10; "
                                                 r"lower the learning rate \(finetune.ap.lr\)$"):
            run_jobs([diverging], ray_config, tmp_path, experiment=f"diverge-{workers}")
        assert not RunStore(run_location(storage_root(ray_config, tmp_path), diverging)).finished()


def test_a_stage_killed_outright_resumes_unfinished_runs_and_skips_finished_ones(tmp_path, ray_cluster):
    work = tmp_path / "repo"
    env = tiny_repository(work, ray_cluster, finetune_epochs=12)
    python = str(VENV_BIN / "python")
    prepare_finetune(work, tmp_path / "base")  # only finetune is killed

    storage = work / "runs" / "ray"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([python, "stages/finetune.py"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)

    def finished_and_unfinished() -> bool:
        finished = list(storage.glob("digits-*-r0-*/outcome/history.json"))
        unfinished = [d for d in storage.glob("digits-*-r0-*") if not (d / OUTCOME_DIR).exists() and _latest_epoch(d) >= 1]
        return bool(finished) and bool(unfinished)

    try:
        _wait_for(finished_and_unfinished, 300, "one finished run and one part-way")
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
        for path in (work / "models/finetune").glob("*/history.json")
    }
    assert len(histories) == len(TINY_METHODS)
    for history in histories.values():
        assert [row["epoch"] for row in history] == list(range(12))
    assert any(max(row["resumes"] for row in h) >= 1 for h in histories.values())  # one resumed part-way
    # runs that had finished before the kill were reused, not trained again
    for name, mtime in finished_before.items():
        assert (storage / name / OUTCOME_DIR / "model.pt").stat().st_mtime_ns == mtime
        job_name = name.rsplit("-", 1)[0]
        assert all(row["resumes"] == 0 for row in histories[job_name])


@contextlib.contextmanager
def someone_elses_head(name: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head started with `ray start`, as another user of the machine would: its address, and
    the environment of a process on that machine (no RAY_ADDRESS; RAY_TMPDIR, where `ray start`
    recorded the head in ray/ray_current_cluster, is the head's own, not the real /tmp/ray)."""
    ray_tmp = Path("/tmp") / f"rh-{name}-{os.getpid()}"  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
           "CSADA_CHECKPOINT_INTERVAL_S": "0", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    try:
        subprocess.run([str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}", env
    finally:
        _stop_processes_mentioning(str(ray_tmp))  # that head, and any local cluster a test started there
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_with_no_address_a_stage_starts_a_cluster_of_its_own_not_the_one_on_the_machine():
    with someone_elses_head("null") as (head, env):
        # The premise: here, ray.init() without an address joins the head `ray start` recorded.
        assert _python("import ray; ray.init(); print(ray.get_runtime_context().gcs_address)", env) == head
        ours = _python("import ray\n"
                       "from pipeline.cluster.distributed import connect\n"
                       "from pipeline.config import RayConfig\n"
                       "connect(RayConfig(use_gpu=False))\n"
                       "print(ray.get_runtime_context().gcs_address, ray.get_runtime_context().get_node_id())", env)
        others = _python(f"import ray; ray.init(address='{head}'); print([n['NodeID'] for n in ray.nodes()])", env)
    gcs, node = ours.split()
    assert gcs != head and node not in others


# A stage that trains one toy job on the cluster of RAY_ADDRESS (or its own), under the stage boundary.
_STAGE = """
import json, sys
from pathlib import Path
from pipeline.cluster.distributed import run_jobs
from pipeline.config import RayConfig
from pipeline.runs.jobs import TrainJob
from pipeline.stage import run_stage

job_file = Path(sys.argv[1])


def main(config):
    job = TrainJob.from_dict(json.loads(job_file.read_text()))
    run_jobs([job], RayConfig(use_gpu=False, storage_path="runs"), job_file.parent, experiment="finetune")
    return "trained"


run_stage("finetune", main, params=sys.argv[2])
"""


def _stage_env(address: str) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(REPO), "CSADA_CHECKPOINT_INTERVAL_S": "0"}


def _start_stage(project: Path, job: TrainJob, env: dict[str, str]) -> subprocess.Popen:
    (project / "job.json").write_text(json.dumps(job.to_dict()))
    (project / "stage.py").write_text(_STAGE)
    return subprocess.Popen([sys.executable, str(project / "stage.py"), str(project / "job.json"),
                             str(REPO / "params.yaml")], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as a terminal delivers it, even where the tests run with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_epoch(stage: subprocess.Popen, run_dir: Path, epoch: int) -> int:
    try:
        _wait_for(lambda: _latest_epoch(run_dir) >= epoch or stage.poll() is not None, 300, f"epoch {epoch}")
    finally:
        if stage.poll() is not None:
            raise AssertionError(f"the stage ended early: {stage.communicate()}")
    return _latest_epoch(run_dir)


def test_ctrl_c_ends_a_training_stage_as_interrupted_and_keeps_its_checkpoint(tmp_path, ray_cluster):
    job = _toy_job(tmp_path, epochs=2000)
    stage = _start_stage(tmp_path, job, _stage_env(ray_cluster))
    run_dir = tmp_path / "runs" / run_name(job)
    try:
        reached = _wait_for_epoch(stage, run_dir, 2)
        stage.send_signal(signal.SIGINT)
        out, err = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 130, (out, err)
    assert err.strip() == "stage finetune: interrupted; run it again to resume", err  # not "ended without an outcome"
    assert _latest_epoch(run_dir) >= reached


def test_a_stage_whose_cluster_goes_away_ends_in_one_line_and_the_next_run_resumes(tmp_path, ray_cluster):
    job = _toy_job(tmp_path, epochs=80)
    run_dir = tmp_path / "runs" / run_name(job)
    with someone_elses_head("lost") as (head, env):
        stage = _start_stage(tmp_path, job, {**env, "RAY_ADDRESS": head})
        try:
            reached = _wait_for_epoch(stage, run_dir, 2)
            _stop_processes_mentioning(env["RAY_TMPDIR"], grace=0.0)  # the head, its raylet and the trial
            out, err = stage.communicate(timeout=120)
        finally:
            if stage.poll() is None:
                stage.kill()
    assert stage.returncode == 2, (out, err)
    assert err.strip() == (f"error in stage finetune: the Ray cluster at {head} (RAY_ADDRESS) stopped answering; "
                           "the runs keep their checkpoints: start the cluster again (or set ray.address: null for "
                           "a local one) and run the stage again to resume"), err
    again = _start_stage(tmp_path, job, _stage_env(ray_cluster))  # on a cluster that stays
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, (out, err)
    history = _history(run_dir)
    assert [row["epoch"] for row in history] == list(range(80))
    assert next(row["epoch"] for row in history if row["resumes"] > 0) >= reached

