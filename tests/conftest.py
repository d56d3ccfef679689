"""Shared fixtures: one local Ray cluster for every test that needs Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.method.costfiles import save_costs

REPO = Path(__file__).resolve().parents[1]

# Keep every Ray address of the tests on loopback: without this, Ray swaps 127.0.0.1 for the
# machine's outward address when a driver joins a cluster. (Single-node clusters only.)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The test cluster listens on loopback only, so it runs without Ray's token authentication
# (a user's cluster keeps it: drivers then need RAY_AUTH_TOKEN, see docs/ray.md).
os.environ["RAY_AUTH_MODE"] = "disabled"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray head on loopback for the whole session; yields its address (for RAY_ADDRESS).

    Starting Ray costs seconds, so the tests share one cluster, and stage subprocesses join
    it through RAY_ADDRESS exactly as users join theirs.
    """
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp_dir = Path("/tmp") / f"ray-tests-{os.getpid()}"  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )
    address = f"127.0.0.1:{port}"
    try:
        yield address
    finally:
        _stop_processes_mentioning(str(temp_dir))  # `ray stop` would stop every cluster on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_processes_mentioning(marker: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, the processes whose command line contains ``marker``, and every
    process below them (Ray's agents rename themselves, so only their ancestry says whose they are)."""
    from pipeline.cluster.lifeline import descendants

    def mentioning() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker.encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found

    below = {child for pid in mentioning() for child in descendants(pid)}  # found before their parents die

    def matching() -> list[int]:
        return sorted(set(mentioning()) | {pid for pid in below if Path(f"/proc/{pid}").exists()})

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        for pid in matching():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while matching() and time.monotonic() < deadline:
            time.sleep(0.1)


VENV_BIN = Path(sys.executable).parent


TINY_METHODS = ("csada", "ap")


def tiny_repository(destination: Path, ray_address: str, finetune_epochs: int = 2) -> dict[str, str]:
    """Copy the repository's files (what git tracks or would track) to ``destination``, shrink
    the digits recipe to a few epochs and one replication, and return the environment to run
    its stages in: the venv first on PATH and the shared Ray cluster in RAY_ADDRESS."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if name.startswith("results/") or not source.is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    recipe = yaml.safe_load((destination / "recipes/digits.yaml").read_text())
    recipe["baseline"]["epochs"] = 3
    params = yaml.safe_load((destination / "params.yaml").read_text())
    for method in params["finetune"]["methods"]:
        recipe[method]["epochs"] = finetune_epochs
    (destination / "recipes/digits.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    # Two methods (tests/test_stages.py runs all of them in-process): CSADA and a baseline of the
    # paper, each searched with two trials, then one replication.
    params["finetune"].update(methods=list(TINY_METHODS), replications=1)
    params["search"].update(max_trials=2, time_budget_s=300)
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_ADDRESS": ray_address,
        # The copy's own code runs (not the checkout's the venv installed): an edit there counts.
        "PYTHONPATH": str(destination),
        "CSADA_CHECKPOINT_INTERVAL_S": "0",  # a checkpoint after every epoch: the kill tests wait for them
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }


def prepare_finetune(work: Path, scratch: Path) -> None:
    """The stages before finetune of the repository copy ``work`` (:func:`tiny_repository`), run in
    this process: fetch, split and costs, the baseline trained without Ray (its run folder in
    ``scratch``) and the search skipped (the recipe's settings), so that a test runs, kills or
    disturbs the finetune stage alone."""
    from pipeline.config import SearchConfig, load_config
    from pipeline.runs.checkpoints import RunStore
    from pipeline.runs.train import train_func
    from stages import baseline, costs, fetch, search, split

    with contextlib.chdir(work):  # the stages' paths are relative to the project
        config = load_config(work / "params.yaml")
        for stage in (fetch, split, costs):
            stage.main(config)
        job = baseline.baseline_job(config)
        train_func({"job": job.to_dict(), "store": str(scratch), "root": str(work), "device": "cpu"})
        RunStore(str(scratch)).copy_outcome(work / config.paths.baseline)
        search.main(dataclasses.replace(config, search=SearchConfig(max_trials=0)))


def run(command: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it exits non-zero."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def prepare_toy(root: Path) -> dict[str, str]:
    """Fetched toy data, its manifest and the green -> blue cost matrix under the project folder
    ``root``: the input paths of a TrainJob, relative to ``root`` as the stages write them."""
    from pipeline.datasets.prepare import fetch_dataset, make_manifest, write_manifest
    from pipeline.method.costs import CostMatrix

    fetch_dataset("toy", root / "raw" / "toy", seed=0)
    write_manifest(make_manifest("toy", root / "raw" / "toy", seed=0), root / "toy.parquet")
    save_costs(CostMatrix.single_pair(["red", "green", "blue"], "green", "blue"), root / "cost.csv")
    return {"raw_dir": "raw/toy", "manifest": "toy.parquet", "cost_csv": "cost.csv"}
