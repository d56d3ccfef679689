"""Shared fixtures: one local Ray cluster for every test that needs Ray."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Keep every Ray address of the tests on loopback: without this, Ray swaps 127.0.0.1 for the
# machine's outward address when a driver joins a cluster. (Single-node clusters only.)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The test cluster listens on loopback only, so it runs without Ray's token authentication
# (a user's cluster keeps it: drivers then need RAY_AUTH_TOKEN, see the README).
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
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
