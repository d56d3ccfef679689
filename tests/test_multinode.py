"""A Ray cluster of several nodes on this machine, and a node lost in the middle of training.

The cluster is started as a real one is (tests/two_nodes.py: ``ray start`` processes, one CPU per
node); the stages join it through RAY_ADDRESS and keep their runs in a folder every node shares.

* The tiny pipeline's fine-tuning sweep trains its two runs one on each node.
* The worker node lost mid-sweep (its raylet and workers killed): every run finishes on the head,
  the run that was on the lost node resumes from its last checkpoint (it trains at most the epoch
  in progress again), the stage's outputs equal the undisturbed sweep's (the models byte for byte,
  the histories but for their ``resumes`` column, which records the restart), and the console
  tells it in one line.
* A two-worker DDP run (gloo) across two nodes loses one of them: Ray Train restarts its worker
  group from the run's checkpoint, on the head and a node that joins, and the run ends with the
  weights and metrics of its undisturbed twin.

Run them alone with ``pytest -m cluster``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.runs.checkpoints import load_checkpoint
from pipeline.runs.jobs import TrainJob, run_name
from tests.conftest import (
    REPO,
    TINY_METHODS,
    VENV_BIN,
    prepare_finetune,
    run,
    tiny_repository,
)
from tests.test_fault_tolerance import _latest_epoch, _toy_job, _wait_for
from tests.two_nodes import (
    HEALTH_CHECK_FAILURES,
    HEALTH_CHECK_PERIOD_MS,
    RayNode,
    RayNodes,
    worker_log_lines,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

FINETUNE_EPOCHS = 6
DDP_EPOCHS = 12
PYTHON = str(VENV_BIN / "python")
# One console line stays one line (the stages wrap theirs at the terminal's width).
WIDE = {"COLUMNS": "500"}
EPOCH_LINE = "] epoch "  # a trained epoch, as the run's first worker prints it (pipeline.runs.train)


@pytest.fixture(scope="module")
def nodes():
    cluster = RayNodes("rn")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def sweep(nodes, tmp_path_factory):
    """The tiny pipeline's copy, ready for its finetune stage, and the environment that runs the
    stage on the cluster, whose second node joins now."""
    nodes.add_node("worker")
    work = tmp_path_factory.mktemp("multinode") / "repo"
    env = {**tiny_repository(work, nodes.address, finetune_epochs=FINETUNE_EPOCHS), **nodes.driver_env, **WIDE}
    prepare_finetune(work, work.parent / "baseline-run")
    return work, env


@pytest.fixture(scope="module")
def undisturbed(nodes, sweep):
    """The sweep run to its end: its console, its outputs, and the runs each node trained."""
    work, env = sweep
    result = run([PYTHON, "stages/finetune.py"], work, env)
    trained_on = {node.name: {_run_of(line) for line in worker_log_lines(node, EPOCH_LINE)} for node in nodes.nodes}
    return result.stdout + result.stderr, _outputs(work / "models" / "finetune"), trained_on


def _run_of(line: str) -> str:
    return line.split("]", 1)[0].rsplit("[", 1)[1]


def _outputs(folder: Path) -> dict[str, object]:
    """The files of a stage's output folder as compared across runs: bytes, but a history without
    its ``resumes`` column (how often the run restarted, which is all a lost node may change)."""
    found: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.name == "history.json":
            summary = json.loads(path.read_text())
            summary["history"] = [{k: v for k, v in row.items() if k != "resumes"} for row in summary["history"]]
            found[name] = summary
        else:
            found[name] = path.read_bytes()
    return found


def _since(before: dict[str, list[str]], node: RayNode) -> list[str]:
    """The epoch lines ``node``'s workers printed since ``before`` (a rerun prints the same lines)."""
    return list((Counter(worker_log_lines(node, EPOCH_LINE)) - Counter(before[node.name])).elements())


def _resumes(history_file: Path) -> list[int]:
    return [row["resumes"] for row in json.loads(history_file.read_text())["history"]]


def test_the_sweep_trains_its_runs_one_on_each_node(undisturbed):
    console, outputs, trained_on = undisturbed
    runs = {f"digits-{method}-r0" for method in TINY_METHODS}
    assert set(outputs) == {"runs.json"} | {f"{run}/{name}" for run in runs for name in ("model.pt", "history.json")}
    assert len(trained_on["head"]) == len(trained_on["worker"]) == 1, trained_on
    assert trained_on["head"] | trained_on["worker"] == runs
    assert "left the cluster" not in console


def test_a_node_lost_mid_sweep_costs_its_run_at_most_an_epoch_and_changes_no_output(nodes, sweep, undisturbed):
    work, env = sweep
    worker = next(node for node in nodes.nodes if node.name == "worker")
    shutil.rmtree(work / "runs" / "ray")  # every run trains again, from its first epoch
    shutil.rmtree(work / "models" / "finetune")
    before = {node.name: worker_log_lines(node, EPOCH_LINE) for node in nodes.nodes}
    stage = subprocess.Popen([PYTHON, "stages/finetune.py"], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        # Two epochs of the worker's run printed: the first of them, at least, is checkpointed.
        _wait_for(lambda: len(_since(before, worker)) >= 2 or stage.poll() is not None, 300,
                  "two epochs trained on the worker node")
        assert stage.poll() is None, stage.communicate()
        lost_run = _run_of(_since(before, worker)[0])
        [run_dir] = (work / "runs" / "ray").glob(f"{lost_run}-*")
        nodes.kill(worker)
        saved = _latest_epoch(run_dir)  # the last checkpoint its node wrote
        out, err = stage.communicate(timeout=300)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 0, (out, err)

    # Every run finished; the lost one picked up right after its last checkpoint, on the head.
    assert _outputs(work / "models" / "finetune") == undisturbed[1]
    for run_name_ in {f"digits-{method}-r0" for method in TINY_METHODS}:
        resumes = _resumes(work / "models" / "finetune" / run_name_ / "history.json")
        assert resumes == ([0] * (saved + 1) + [1] * (FINETUNE_EPOCHS - saved - 1) if run_name_ == lost_run
                           else [0] * FINETUNE_EPOCHS)
    trained = [line for node in nodes.nodes for line in _since(before, node) if _run_of(line) == lost_run]
    assert FINETUNE_EPOCHS <= len(trained) <= FINETUNE_EPOCHS + 1  # at most the epoch in progress, again
    # One line tells it all: no retry line of the run's own, none of Ray's.
    console = (out + err).splitlines()
    host = nodes.address.rsplit(":", 1)[0]
    assert [line for line in console if worker.node_id[:8] in line or "node" in line.split()] == [
        (f"  node {worker.node_id[:8]} ({host}) left the cluster: 1 run resumed on the other nodes from its "
         f"checkpoint ({lost_run} after epoch {saved + 1})")], out + err
    assert not [line for line in console if "failed" in line or "marked dead" in line], out + err


# A stage that trains toy jobs with two DDP workers of 0.6 CPU each (no node of one CPU holds both),
# one job at a time.
_DDP_STAGE = """
import json, sys
from pathlib import Path
from pipeline.cluster.distributed import run_jobs
from pipeline.config import RayConfig
from pipeline.runs.jobs import TrainJob
from pipeline.stage import run_stage

jobs_file = Path(sys.argv[1])


def main(config):
    jobs = [TrainJob.from_dict(job) for job in json.loads(jobs_file.read_text())]
    run_jobs(jobs, RayConfig(use_gpu=False, storage_path="runs", num_workers=2, cpus_per_worker=0.6,
                             max_concurrent_trials=1), jobs_file.parent, experiment="finetune")
    return "trained"


run_stage("finetune", main, params=sys.argv[2])
"""


def _start_ddp_stage(project: Path, jobs: list[TrainJob], env: dict[str, str]) -> subprocess.Popen:
    (project / "jobs.json").write_text(json.dumps([job.to_dict() for job in jobs]))
    (project / "stage.py").write_text(_DDP_STAGE)
    return subprocess.Popen([PYTHON, str(project / "stage.py"), str(project / "jobs.json"), str(REPO / "params.yaml")],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runs_ray_train_controller(node: RayNode) -> bool:
    for pid in node.pids():
        try:
            if b"TrainController" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def _trained(outcome: Path) -> tuple[dict[str, list], list[dict], int]:
    """What a run trained, apart from its name: the selected weights, each epoch's metrics but the
    ``resumes`` column, and the selected epoch."""
    state = load_checkpoint(outcome / "model.pt")
    summary = json.loads((outcome / "history.json").read_text())
    return ({key: value.tolist() for key, value in state["model"].items()},
            [{k: v for k, v in row.items() if k != "resumes"} for row in summary["history"]], summary["best_epoch"])


def test_a_ddp_run_that_loses_a_workers_node_is_restarted_by_ray_train_from_its_checkpoint(nodes, tmp_path):
    env = {**os.environ, **nodes.driver_env, **WIDE, "PYTHONPATH": str(REPO), "CSADA_CHECKPOINT_INTERVAL_S": "0"}
    # The head alone, so that the run's Tune trial and the Ray Train controller it starts live there.
    alive = [node for node in nodes.nodes[1:] if node.pids()]
    for node in alive:
        nodes.kill(node)
    if alive:  # until the head has declared them dead, it may place work on them
        time.sleep(HEALTH_CHECK_PERIOD_MS * (HEALTH_CHECK_FAILURES + 2) / 1000)
    job = _toy_job(tmp_path, DDP_EPOCHS)
    twin = dataclasses.replace(job, name="toy-twin")  # trained after it, undisturbed: the reference
    stage = _start_ddp_stage(tmp_path, [job, twin], env)
    run_dir = tmp_path / "runs" / run_name(job)
    try:
        _wait_for(lambda: _runs_ray_train_controller(nodes.head) or stage.poll() is not None, 180,
                  "Ray Train's controller on the head")
        first = nodes.add_node("ddp-1")  # the two workers: one on the head, one here
        _wait_for(lambda: _latest_epoch(run_dir) >= 2 or stage.poll() is not None, 180, "two checkpointed epochs")
        assert stage.poll() is None, stage.communicate()
        nodes.kill(first)
        saved = _latest_epoch(run_dir)
        # The head alone cannot hold both workers: a node joins, as an autoscaler would start one.
        nodes.add_node("ddp-2")
        out, err = stage.communicate(timeout=300)
    finally:
        if stage.poll() is None:
            stage.send_signal(signal.SIGKILL)
    assert stage.returncode == 0, (out, err)
    assert _resumes(run_dir / "outcome" / "history.json") == [0] * (saved + 1) + [1] * (DDP_EPOCHS - saved - 1)
    trained = [line for node in nodes.nodes for line in worker_log_lines(node, f"[{job.name}{EPOCH_LINE}")]
    assert DDP_EPOCHS <= len(trained) <= DDP_EPOCHS + 1
    console = (out + err).splitlines()
    assert [line for line in console if "node" in line.split()] == [
        (f"  node {first.node_id[:8]} ({nodes.address.rsplit(':', 1)[0]}) left the cluster: 1 run resumed on the "
         f"other nodes from its checkpoint ({job.name} after epoch {saved + 1})")], out + err
    assert not [line for line in console if "failed" in line or "marked dead" in line], out + err
    # Ray Train restarted the workers; the Tune trial that drives them went on (no retry of it).
    assert f"{job.name}: its trial failed" not in (tmp_path / "runs" / "logs" / "finetune.log").read_text()
    # The same weights and metrics as its undisturbed twin (the files differ: they name the run),
    # which the two DDP workers wrote into its one run folder: every epoch once, and the job it ran.
    twin_outcome = tmp_path / "runs" / run_name(twin) / "outcome"
    assert _trained(run_dir / "outcome") == _trained(twin_outcome)
    assert _resumes(twin_outcome / "history.json") == [0] * DDP_EPOCHS
    assert load_checkpoint(twin_outcome / "model.pt")["job"] == twin.to_dict()
