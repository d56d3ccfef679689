"""Bad input and faults, without Ray: verified reuse, checks before training, divergence, one
trainer per run, a stage that outlives its dvc, and the stages' one-line errors.

The Ray side of the same promises (a user error inside a worker is not retried) is in
tests/test_fault_tolerance.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.cluster import distributed, lifeline
from pipeline.config import RayConfig
from pipeline.datasets.common import DatasetError
from pipeline.datasets.prepare import fetch_dataset, make_manifest, write_manifest
from pipeline.method.costs import CostMatrix
from pipeline.models.networks import ModelConfigError
from pipeline.runs import runlocks
from pipeline.runs.checkpoints import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    OUTCOME_DIR,
    CheckpointError,
    RunStore,
    save_checkpoint,
)
from pipeline.runs.jobs import TrainJob, run_name
from pipeline.runs.optim import OptimConfig
from pipeline.runs.preflight import check_jobs
from pipeline.runs.train import DivergedError, check_diverged, train_func
from pipeline.stage import run_stage
from tests.conftest import prepare_toy
from tests.fakes import flip_bit_in_tensor


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("project")
    return root, prepare_toy(root)


def toy_job(project, name="toy-ap", **changes) -> TrainJob:
    _, inputs = project
    base = TrainJob(name=name, dataset="toy", model="mlp", model_options={}, pretrained=False, method="ap",
                    method_options={"alpha": 1.0},
                    optim=dataclasses.asdict(OptimConfig(epochs=1, optimizer="adam", lr=0.01, batch_size=64)),
                    seed=3, select_metric="val_wer", **inputs)
    return dataclasses.replace(base, **changes)


def train_in_process(trained: list[str]):
    """distributed._fit's stand-in: each pending job trained here, in order."""

    def fit(jobs, ray_config, root, storage, experiment):
        for job in jobs:
            trained.append(job.name)
            train_func({"job": job.to_dict(), "store": f"{storage}/{run_name(job)}", "root": str(root),
                        "device": "cpu"})

    return fit


@pytest.fixture
def runs(project, tmp_path, monkeypatch):
    """run_jobs over a local storage folder, training in this process; returns (run, trained, storage)."""
    root, _ = project
    trained: list[str] = []
    monkeypatch.setattr(distributed, "_fit", train_in_process(trained))
    monkeypatch.setattr(distributed, "connect", lambda *args, **kwargs: None)  # no Ray here
    storage = tmp_path / "ray"
    config = RayConfig(storage_path=str(storage))

    def run(jobs):
        return distributed.run_jobs(jobs, config, root, experiment="test")

    return run, trained, storage


# -- a finished run is reused only when it verifies ------------------------------------------------


def test_a_corrupt_finished_run_is_discarded_and_retrained_not_reused(project, runs, capsys):
    run, trained, storage = runs
    job = toy_job(project)
    (store,) = run([job])
    assert trained == [job.name] and store.outcome_problem(job.to_dict()) is None
    summary = json.loads((storage / run_name(job) / OUTCOME_DIR / HISTORY_FILE).read_text())
    assert len(summary["model_sha256"]) == 64

    run([job])  # intact: reused
    assert trained == [job.name]
    assert "1 of 1 runs finished before: reused" in capsys.readouterr().out

    model = storage / run_name(job) / OUTCOME_DIR / MODEL_FILE
    model.write_bytes(model.read_bytes()[:2000])  # truncate -s 2000, as a user saw
    (store,) = run([job])
    said = " ".join(capsys.readouterr().out.split())  # console lines wrap at the terminal width
    assert f"run {run_name(job)} finished before but its model.pt (2000 bytes) differs" in said
    assert "discarded, training it again" in said
    assert trained == [job.name, job.name]
    assert store.outcome_problem(job.to_dict()) is None and model.stat().st_size > 2000


def test_an_outcome_without_a_checksum_or_for_another_job_is_not_trusted(project, tmp_path):
    root, _ = project
    job = toy_job(project)
    store = RunStore(str(tmp_path / "run"))
    train_func({"job": job.to_dict(), "store": store.location, "root": str(root), "device": "cpu"})
    assert store.outcome_problem(dataclasses.replace(job, seed=4).to_dict()) == "its history.json is for another job"
    history = tmp_path / "run" / OUTCOME_DIR / HISTORY_FILE
    summary = json.loads(history.read_text())
    del summary["model_sha256"]
    history.write_text(json.dumps(summary))
    assert "records no checksum" in store.outcome_problem(job.to_dict())
    history.write_text("{not json")
    assert "history.json cannot be read" in store.outcome_problem(job.to_dict())


def test_copying_an_outcome_checks_the_model_against_its_checksum(project, tmp_path):
    root, _ = project
    job = toy_job(project)
    store = RunStore(str(tmp_path / "run"))
    train_func({"job": job.to_dict(), "store": store.location, "root": str(root), "device": "cpu"})
    store.copy_outcome(tmp_path / "good")
    model = tmp_path / "run" / OUTCOME_DIR / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern: still a file of the same size
    model.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed after the run verified"):
        store.copy_outcome(tmp_path / "bad")
    assert not (tmp_path / "bad" / MODEL_FILE).exists()


def test_an_unreadable_checkpoint_is_discarded_and_the_run_starts_over(project, runs, capsys):
    run, trained, storage = runs
    job = toy_job(project)
    folder = storage / run_name(job)
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 truncated")
    RunStore(str(folder)).record_state_checksum()  # damaged before its checksum was taken
    (folder / f"{CHECKPOINT_FILE}.0123abcd.partial").write_bytes(b"half a write")
    (store,) = run([job])
    said = " ".join(capsys.readouterr().out.split())  # console lines wrap at the terminal width
    assert f"run {run_name(job)}: checkpoint" in said and "cannot be read" in said
    assert "discarded, training it from the start" in said
    assert store.load_state()["resumes"] == 0  # trained from epoch 0, not resumed
    assert not list(folder.glob("*.partial"))  # what the interrupted write left is gone


def test_a_checkpoint_saved_for_another_job_is_not_resumed(project, tmp_path):
    root, _ = project
    job = toy_job(project)
    store = RunStore(str(tmp_path / "run"))
    store.save_state({"model": {}, "job": dataclasses.replace(job, seed=99).to_dict()})
    assert store.state_problem(job.to_dict()).endswith("was saved for another job")
    store.discard()
    assert store.state_problem(job.to_dict()) is None and not list((tmp_path / "run").iterdir())


def test_a_bit_flipped_inside_a_checkpoints_tensor_is_discarded_with_one_line_not_resumed(project, runs, capsys):
    run, trained, storage = runs
    job = toy_job(project, name="toy-flipped")
    folder = storage / run_name(job)
    run([job])
    shutil.rmtree(folder / OUTCOME_DIR)  # unfinished again: its checkpoint is all that is left
    run([job])
    said = " ".join(capsys.readouterr().out.split())
    assert "resuming after epoch 1" in said and "discarded" not in said  # intact: resumed
    shutil.rmtree(folder / OUTCOME_DIR)
    weights = RunStore(str(folder)).load_state()["model"]
    largest = max(weights.values(), key=lambda tensor: tensor.numel())
    checkpoint = folder / CHECKPOINT_FILE
    checkpoint.write_bytes(flip_bit_in_tensor(checkpoint.read_bytes(), largest))
    run([job])
    said = "".join(capsys.readouterr().out.split())  # the console wraps a long path anywhere
    line = (f"test: run {run_name(job)}: {checkpoint.resolve()} differs from the checksum written with it "
            "(a damaged copy): discarded, training it from the start")
    assert "".join(line.split()) in said
    assert "resuming" not in said and trained == [job.name] * 3


# -- checked before Ray starts -----------------------------------------------------------------------


def test_model_options_are_checked_before_training(project):
    root, _ = project
    with pytest.raises(ModelConfigError, match=r"^recipes/toy.yaml: model_options \{'bogus': 3\}: unknown option\(s\) "
                                               r"\['bogus'\] for model 'mlp'"):
        check_jobs([toy_job(project, model_options={"bogus": 3})], root)
    check_jobs([toy_job(project)], root)  # the good job passes


def test_a_starting_checkpoint_of_another_model_is_refused_before_training(project, tmp_path):
    root, _ = project
    save_checkpoint({"model": {"weight": torch.zeros(3)}}, root / "other.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint other.pt does not fit model"):
        check_jobs([toy_job(project, init_checkpoint="other.pt")], root)
    (root / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken.pt is not a PyTorch checkpoint"):
        check_jobs([toy_job(project, init_checkpoint="broken.pt")], root)
    save_checkpoint({"model": {"weight": np.zeros(3)}}, root / "pickled.pt")  # numpy: code to unpickle
    with pytest.raises(CheckpointError, match=r"pickled.pt holds objects other than tensors and plain values"):
        check_jobs([toy_job(project, init_checkpoint="pickled.pt")], root)


def _table(root: Path, name: str, frame: pd.DataFrame) -> dict[str, str]:
    """A table data set fetched and split under ``root``: a job's input paths."""
    frame.to_csv(root / f"{name}.csv", index=False)
    fetch_dataset("table", root / "raw" / name, source=root / f"{name}.csv", seed=0)
    write_manifest(make_manifest("table", root / "raw" / name, seed=0), root / f"{name}.parquet")
    return {"raw_dir": f"raw/{name}", "manifest": f"{name}.parquet", "cost_csv": None}


def test_nan_features_are_found_before_training_with_the_file_and_column(project, tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(90, 3)), columns=["a", "b", "c"]).assign(label=np.arange(90) % 3)
    inputs = _table(tmp_path, "nan", frame)
    # The table changes after the split stage ran: the runs would meet the NaN in their workers.
    frame.loc[5, "b"] = np.nan
    frame.to_csv(tmp_path / "raw" / "nan" / "table.csv", index=False)
    job = toy_job(project, dataset="table", **inputs)
    with pytest.raises(DatasetError, match=r"features contain NaN or infinite values: 'b' in 1 row"):
        check_jobs([job], tmp_path)


def test_a_split_column_without_validation_rows_is_refused_at_the_split(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(90, 2)), columns=["a", "b"]).assign(
        label=np.arange(90) % 3, split=np.where(np.arange(90) < 60, "train", "test"))
    frame.to_csv(tmp_path / "t.csv", index=False)
    fetch_dataset("table", tmp_path / "raw", source=tmp_path / "t.csv", seed=0)
    with pytest.raises(DatasetError, match=r"has no val samples; training needs all of train, val, test"):
        make_manifest("table", tmp_path / "raw", seed=0)


# -- divergence is a failure -------------------------------------------------------------------------


def test_an_exploding_or_non_finite_loss_is_divergence_naming_the_learning_rate(project):
    job = toy_job(project)
    check_diverged(job, {"epoch": 0, "val_loss": 5.0, "train_loss": 2.0})  # a poor model, not a diverged one
    with pytest.raises(DivergedError, match=r"diverged at epoch 2 \(validation loss 2e\+22 > 100\) with adam lr "
                                            r"0.01; lower the learning rate \(finetune.ap.lr\)"):
        check_diverged(job, {"epoch": 1, "val_loss": 2e22})
    with pytest.raises(DivergedError, match=r"\(train_loss not finite\).*\(baseline.lr\)"):
        check_diverged(dataclasses.replace(job, method="erm"), {"epoch": 0, "val_loss": 1.0, "train_loss": float("nan")})


def test_a_run_at_lr_1e10_stops_as_diverged_and_writes_no_outcome(project, tmp_path):
    root, _ = project
    job = toy_job(project, optim=dataclasses.asdict(OptimConfig(epochs=5, optimizer="sgd", lr=1e10, batch_size=64)))
    store = RunStore(str(tmp_path / "run"))
    with pytest.raises(DivergedError, match="lower the learning rate"):
        train_func({"job": job.to_dict(), "store": store.location, "root": str(root), "device": "cpu"})
    assert not store.finished()


# -- one trainer per run -------------------------------------------------------------------------------


def test_a_run_folder_held_by_a_live_process_is_refused_naming_it(tmp_path):
    folder = tmp_path / "digits-ap-r0-123"
    with runlocks.locked_runs([folder]):
        # Another stage (a second descriptor: flock locks are per open file) waits, then gives up.
        with pytest.raises(runlocks.RunBusyError, match=rf"run digits-ap-r0-123 is being trained by process "
                                                          rf"{os.getpid()} on .*; wait for it to finish, or stop"):
            with runlocks.locked_runs([folder], wait_s=0.3):
                pass
    with runlocks.locked_runs([folder], wait_s=0):  # released on exit
        pass


def test_the_lock_of_a_killed_process_is_taken_over_at_once(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from pipeline.runs.runlocks import locked_runs\n"
         f"with locked_runs([Path({str(folder)!r})]):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runlocks.RunBusyError, match=f"process {holder.pid}"):
            with runlocks.locked_runs([folder], wait_s=0):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with runlocks.locked_runs([folder], wait_s=0):  # the kernel dropped the dead holder's lock
            assert json.loads((folder / runlocks.LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        holder.kill()


def test_a_stage_stops_when_the_dvc_process_above_it_dies(tmp_path):
    # A stand-in for `dvc repro`: a script named dvc that starts a "stage" through a shell, as
    # DVC does, and is then killed with SIGKILL: the stage must notice and stop by itself.
    stage = tmp_path / "stage.py"
    stage.write_text(textwrap.dedent("""
        import time
        from pipeline.cluster import lifeline
        assert lifeline.watch("train") is not None, "no dvc above this process"
        print("watching", flush=True)
        time.sleep(60)
        print("still running", flush=True)
    """))
    dvc = tmp_path / "dvc"
    dvc.write_text(f"import subprocess, sys\nsubprocess.run(['sh', '-c', '{sys.executable} {stage} > {tmp_path}/out "
                   f"2> {tmp_path}/err; true'])\n")
    parent = subprocess.Popen([sys.executable, str(dvc)], env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    deadline = time.monotonic() + 30
    while "watching" not in (tmp_path / "out").read_text() if (tmp_path / "out").exists() else True:
        assert time.monotonic() < deadline and parent.poll() is None, "the stage did not start"
        time.sleep(0.1)
    stage_pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                  and str(stage).encode() in _cmdline(p)
                  and os.path.basename(_cmdline(p).split(b"\0")[0]) != b"sh"]  # the stage, not the shell above it
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and lifeline._stat(pid) is not None for pid in stage_pids):
        assert time.monotonic() < deadline, "the orphaned stage kept running"
        time.sleep(0.1)
    assert "its dvc process" in (tmp_path / "err").read_text() and "is gone: stopping" in (tmp_path / "err").read_text()
    assert "still running" not in (tmp_path / "out").read_text()


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_process_without_dvc_above_it_is_not_watched():
    assert lifeline.dvc_chain() == []  # pytest runs under no dvc
    assert lifeline.watch("x") is None


def test_a_stage_ends_in_one_line_with_status_2_once_its_cluster_stops_answering(tmp_path):
    # A stand-in for a cluster's head: a listening socket, closed while the stage runs.
    head = socket.create_server(("127.0.0.1", 0))
    stage = tmp_path / "stage.py"
    stage.write_text(textwrap.dedent(f"""
        import time
        from pipeline.cluster import lifeline
        lifeline.CLUSTER_LOST_AFTER_S, lifeline.CLUSTER_POLL_S = 1.0, 0.2
        with lifeline.running("train"):
            assert lifeline.watch_cluster("127.0.0.1:{head.getsockname()[1]}", "the cluster is gone") is not None
            print("watching", flush=True)
            time.sleep(60)
        print("still running", flush=True)
    """))
    started = subprocess.Popen([sys.executable, str(stage)], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert started.stdout.readline().strip() == "watching"
    time.sleep(2)  # answering: the stage goes on
    assert started.poll() is None
    head.close()
    out, err = started.communicate(timeout=30)
    assert started.returncode == 2 and err == "error in stage train: the cluster is gone\n" and out == ""


def test_outside_a_stage_a_cluster_is_not_watched():
    # A test process outlives the clusters it joins; only a stage ends with its cluster.
    assert lifeline.watch_cluster("127.0.0.1:1", "gone") is None


# -- one line per expected failure ---------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[1]


def _boundary(main, capsys, params: Path = REPO / "params.yaml") -> tuple[int, str]:
    """run_stage around ``main``: its exit status and what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_:
        run_stage("demo", main, params=str(params))
    return exit_.value.code, capsys.readouterr().err


def _missing(config):
    open("no/such/costs.csv")


def _denied(config):
    raise PermissionError(13, "Permission denied", "models/x.pt")


def _huge_cost(config):
    CostMatrix(["a", "b"], [[0, 1e308], [1, 0]])


@pytest.mark.parametrize(("main", "says"), [
    (_missing, "error in stage demo: no/such/costs.csv: No such file or directory"),
    (_denied, "error in stage demo: models/x.pt: Permission denied (check the file's permissions)"),
    (_huge_cost, "error in stage demo: invalid cost c('a', 'b') at [0, 1] = 1e+308: costs must be at most 1e+12"),
])
def test_expected_failures_end_as_one_line_and_status_2(capsys, main, says):
    code, err = _boundary(main, capsys)
    assert code == 2 and err.startswith(says) and len(err.strip().splitlines()) == 1, err


def test_a_yaml_error_in_params_is_one_line(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("dataset: [digits\n")
    code, err = _boundary(lambda config: "ran", capsys, tmp_path / "params.yaml")
    assert code == 2 and err.startswith("error in stage demo: ") and "params.yaml is not valid YAML" in err
    assert len(err.strip().splitlines()) == 1


def test_a_yaml_cost_file_with_a_syntax_error_is_one_line_with_its_places(tmp_path, capsys):
    from pipeline.method.costfiles import load_costs

    cost_file = tmp_path / "mine.yaml"
    cost_file.write_text("classes: [a, b]\ncosts: [[0, 1], [1, 0]\n")  # the last ] is missing
    code, err = _boundary(lambda config: load_costs(cost_file), capsys)
    assert code == 2 and err == (f"error in stage demo: {cost_file}: not valid YAML: while parsing a flow sequence "
                                 "(line 2, column 8); expected ',' or ']', but got '<stream end>' (line 3, column 1)\n")


def test_a_parsers_report_read_from_text_is_folded_without_its_quoted_source():
    from pipeline.stage import one_line

    with pytest.raises(yaml.YAMLError) as caught:
        yaml.safe_load("a: b\n c: d: e\n")
    assert one_line(str(caught.value)) == "mapping values are not allowed here (line 2, column 3)"


def test_a_bug_keeps_its_traceback_and_the_variable_shows_it_for_user_errors(monkeypatch):
    with pytest.raises(KeyError):  # not caught: the traceback shows
        run_stage("demo", lambda config: {}["missing"], params=str(REPO / "params.yaml"))
    monkeypatch.setenv("CSADA_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        run_stage("demo", _missing, params=str(REPO / "params.yaml"))


def test_tune_bookkeeping_of_a_killed_stage_is_removed_and_ours_when_the_fit_ends(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    left = tmp_path / f".tune-finetune-{host}-{int(dead.stdout)}"  # what a killed stage left
    (left / "toy-ap").mkdir(parents=True)
    live = tmp_path / f".tune-finetune-{host}-{os.getppid()}"  # a stage that still runs
    live.mkdir()
    with distributed.tune_experiment(str(tmp_path), "baseline") as name:
        assert name == f".tune-baseline-{host}-{os.getpid()}"
        (tmp_path / name / "experiment_state.json").parent.mkdir()
        assert not left.exists() and live.is_dir()
    assert not (tmp_path / name).exists() and live.is_dir()
