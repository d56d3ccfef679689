"""The Ray edge without Ray: where runs live, reuse without starting a cluster, and an address
where no cluster answers refused before Ray is started."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import ray

from pipeline.cluster.distributed import (
    ClusterError,
    check_reachable,
    connect,
    run_jobs,
    run_location,
    storage_root,
    sweep_spec,
)
from pipeline.config import RayConfig
from pipeline.runs.jobs import TrainJob, run_name
from pipeline.runs.optim import OptimConfig
from pipeline.runs.train import train_func
from tests.conftest import _free_port, prepare_toy


def _job(root: Path) -> TrainJob:
    return TrainJob(name="toy-ap", dataset="toy", **prepare_toy(root), model="mlp", model_options={},
                    pretrained=False, method="ap", method_options={"alpha": 1.0},
                    optim=dataclasses.asdict(OptimConfig(epochs=1, optimizer="adam", lr=0.01, batch_size=32)),
                    seed=0, select_metric="val_wer")


def test_run_folders_sit_under_the_storage_path_and_keep_an_s3_query_last(tmp_path):
    job = _job(tmp_path)
    assert storage_root(RayConfig(storage_path="runs/ray"), tmp_path) == str((tmp_path / "runs/ray").resolve())
    assert storage_root(RayConfig(storage_path="s3://b/p?scheme=http"), tmp_path) == "s3://b/p?scheme=http"
    assert run_location("/abs/runs/", job) == f"/abs/runs/{run_name(job)}"
    assert (run_location("s3://b/runs?endpoint_override=h:9000&scheme=http", job)
            == f"s3://b/runs/{run_name(job)}?endpoint_override=h:9000&scheme=http")


def test_a_trials_config_holds_its_own_run_only_whatever_the_sweeps_size(tmp_path):
    # Tune keeps every trial's config in the driver, copies it into every result it records and
    # keeps a record of every number in it: a config that grows with the sweep makes the driver grow
    # with runs x runs, and numbers in it make Tune's record of each trial larger.
    import json

    from ray.tune.search.variant_generator import generate_variants

    def trial_configs(runs: int) -> list[dict]:
        jobs = [dataclasses.replace(_job(tmp_path), name=f"toy-{i:03d}", seed=i) for i in range(runs)]
        space = sweep_spec(jobs, RayConfig(storage_path="runs"), tmp_path, "/runs", "tune-x", False)
        return [config for _, config in generate_variants(space)]

    configs = trial_configs(60)
    assert [config["run"]["name"] for config in configs] == [f"toy-{i:03d}" for i in range(60)]  # one each, in order
    assert all(set(config) == {"run"} and isinstance(config["run"]["spec"], str) for config in configs)
    spec = json.loads(configs[7]["run"]["spec"])
    assert spec["job"]["seed"] == 7 and spec["store"].startswith("/runs/toy-007-")
    assert trial_configs(2) == configs[:2]  # a run's trial config is the same in a sweep of 2 as of 60


def test_finished_runs_are_reused_without_starting_ray(tmp_path):
    job = _job(tmp_path)
    ray_config = RayConfig(storage_path="runs")
    location = run_location(storage_root(ray_config, tmp_path), job)
    train_func({"job": job.to_dict(), "store": location, "root": str(tmp_path), "device": "cpu"})
    assert not ray.is_initialized()
    [store] = run_jobs([job], ray_config, tmp_path, experiment="reuse")
    assert store.finished() and store.location == location
    assert not ray.is_initialized()  # nothing to train: no cluster was started


def test_a_stage_deletes_no_other_stages_run_unless_told_to(tmp_path, monkeypatch):
    import shutil

    import pipeline.cluster.distributed as distributed

    assert distributed.keep_unused_runs({}) is None  # the default: keep every run
    assert distributed.keep_unused_runs({"CSADA_KEEP_RUNS": "3"}) == 3
    job = _job(tmp_path)
    ray_config = RayConfig(storage_path="runs")
    location = Path(run_location(storage_root(ray_config, tmp_path), job))
    train_func({"job": job.to_dict(), "store": str(location), "root": str(tmp_path), "device": "cpu"})
    other = location.parent / "another-stages-run-0123456789"
    shutil.copytree(location, other)  # a finished run this stage does not use
    monkeypatch.setattr(distributed, "KEEP_UNUSED_RUNS", None)
    run_jobs([job], ray_config, tmp_path, experiment="reuse")
    assert other.is_dir()
    monkeypatch.setattr(distributed, "KEEP_UNUSED_RUNS", 0)  # opted in: keep none it did not use
    run_jobs([job], ray_config, tmp_path, experiment="reuse")
    assert not other.exists() and location.is_dir()


def test_old_finished_runs_are_pruned_and_unfinished_or_used_ones_kept(tmp_path):
    import os

    from pipeline.cluster.distributed import prune_runs

    for i, name in enumerate(["a", "b", "c", "d"]):
        (tmp_path / name / "outcome").mkdir(parents=True)
        (tmp_path / name / "outcome" / "history.json").write_text("{}")
        os.utime(tmp_path / name / "outcome" / "history.json", (1000 + i, 1000 + i))  # a oldest, d newest
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "checkpoint.pt").write_bytes(b"x")
    assert prune_runs(tmp_path, keep={"a"}, limit=1) == ["c", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d", "unfinished"]


def test_an_address_where_no_cluster_answers_fails_at_once_naming_it(monkeypatch):
    # Given such an address, Ray itself retries for minutes without a word on the console.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"^ray.address = 'nonsense.invalid:1': no host is named 'nonsense.invalid' "
                                           r"\(.+\); give the head node's host:port, or null for a local cluster$"):
        connect(RayConfig(address="nonsense.invalid:1"))
    assert not ray.is_initialized()
    closed = _free_port()  # nothing listens there
    with pytest.raises(ClusterError, match=rf"^ray.address = '127.0.0.1:{closed}': nothing answers at 127.0.0.1:{closed} "
                                           rf"within 5 s; start the cluster there \(`ray start --head --port={closed}`\)"):
        check_reachable(f"127.0.0.1:{closed}")
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{closed}")
    with pytest.raises(ClusterError, match=rf"^RAY_ADDRESS = 'ray://127.0.0.1:{closed}': nothing answers"):
        check_reachable(f"ray://127.0.0.1:{closed}")
    assert time.monotonic() - started < 10

