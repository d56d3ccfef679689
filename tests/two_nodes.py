"""A Ray cluster of several nodes on this machine, started as a real one is started.

``ray start --head``, then ``ray start --address=...`` for each further node: each node with
its own temp dir, its own CPU (one by default) and, for a worker node, the custom resource
:data:`WORKER_RESOURCE`, so that a test can pin work to it. Stages join the cluster through
``RAY_ADDRESS`` (:attr:`RayNodes.env`), as on a real cluster; run storage is a folder of this
machine, which every node shares. :meth:`RayNodes.kill` loses a node as a machine is lost:
SIGKILL to its raylet and every process below it (its trial and Ray Train workers, its agents),
with no goodbye to the head.

Ray's ``ray start`` refuses a second node on one machine unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
is 1, and then binds every node to the machine's outward address, never to loopback (the other
tests' single-node cluster stays on 127.0.0.1 with that variable at 0). So this cluster requires a
token (``RAY_AUTH_MODE=token``, one random token per cluster) from every node and driver.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cluster.lifeline import descendants
from tests.conftest import VENV_BIN, _free_port, _stop_processes_mentioning

WORKER_RESOURCE = "worker_node"
# A lost node is declared dead after this many missed health checks of this period (Ray's
# defaults, 5 x 3 s, would add a quarter of a minute to each node-loss test).
HEALTH_CHECK_PERIOD_MS = 500
HEALTH_CHECK_FAILURES = 3
WORKER_GROUP_START_TIMEOUT_S = 3


@dataclass
class RayNode:
    name: str
    temp_dir: Path
    node_id: str = ""

    def pids(self) -> list[int]:
        """This node's processes: those started with its temp dir, and every process below them."""
        marker = str(self.temp_dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        return sorted(set(found) | {child for pid in found for child in descendants(pid)})


@dataclass
class RayNodes:
    """A head (:meth:`start`) and the nodes added to it; :meth:`stop` ends them all."""

    prefix: str
    head_cpus: int = 1
    nodes: list[RayNode] = field(default_factory=list)
    address: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> RayNodes:
        port = _free_port()
        self.env = {
            **os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
            # A Ray Train worker group that cannot be placed yet waits this long before it asks again,
            # and a node that joins meanwhile is only used then (Ray's default: 60 s).
            "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(WORKER_GROUP_START_TIMEOUT_S),
            "RAY_health_check_period_ms": str(HEALTH_CHECK_PERIOD_MS),
            "RAY_health_check_failure_threshold": str(HEALTH_CHECK_FAILURES),
        }
        head = self._start_node("head", ["--head", f"--port={port}", f"--num-cpus={self.head_cpus}",
                                          "--include-dashboard=false", f"--ray-client-server-port={_free_port()}"])
        self.address = f"{_outward_host(head)}:{port}"
        self.env["RAY_ADDRESS"] = self.address
        return self

    def add_node(self, name: str, cpus: int = 1) -> RayNode:
        return self._start_node(name, [f"--address={self.address}", f"--num-cpus={cpus}",
                                       f'--resources={{"{WORKER_RESOURCE}": 1}}'])

    def _start_node(self, name: str, options: list[str]) -> RayNode:
        node = RayNode(name, Path("/tmp") / f"{self.prefix}-{os.getpid()}-{name}")  # socket paths stay short
        shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes.append(node)  # stopped with the rest, even when it fails to start
        for _ in range(2):
            started = subprocess.run(
                [str(VENV_BIN / "ray"), "start", *options, "--num-gpus=0", f"--temp-dir={node.temp_dir}",
                 "--object-store-memory=100000000", f"--dashboard-agent-listen-port={_free_port()}",
                 "--disable-usage-stats"], check=False, env=self.env, capture_output=True, text=True, timeout=180)
            if started.returncode == 0:
                node.node_id = _raylet_option(node, "node_id")
                return node
            # Ray gives a raylet 30 s to register with the head: on a machine busy enough, once more.
            _stop_processes_mentioning(str(node.temp_dir), grace=2.0)
        raise AssertionError(f"ray start of node {name} failed twice:\n{started.stderr[-3000:]}")

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    @property
    def driver_env(self) -> dict[str, str]:
        """What a driver (a stage) needs besides its own environment to join this cluster."""
        return {key: self.env[key] for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}

    def kill(self, node: RayNode) -> list[int]:
        """Lose ``node``: SIGKILL its raylet and every process of it at once; the pids killed."""
        assert node is not self.head, "losing the head loses the cluster"
        pids = node.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        return pids

    def stop(self) -> None:
        for node in reversed(self.nodes):
            _stop_processes_mentioning(str(node.temp_dir), grace=2.0)
        if self.address:  # Ray's client server names the cluster's address, not its temp dir
            _stop_processes_mentioning(f"--address={self.address}", grace=2.0)
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def _raylet_option(node: RayNode, option: str) -> str:
    for pid in node.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("/raylet"):
            for arg in argv:
                if arg.startswith(f"--{option}="):
                    return arg.split("=", 1)[1]
    raise AssertionError(f"node {node.name}: no raylet with --{option} found")


def _outward_host(head: RayNode) -> str:
    """The address the head's raylet bound to (Ray chose it; see the module doc)."""
    return _raylet_option(head, "node_ip_address")


def worker_log_lines(node: RayNode, text: str) -> list[str]:
    """Lines containing ``text`` in the output of ``node``'s Ray workers (the trials' prints)."""
    lines = []
    for path in sorted(node.temp_dir.glob("session_latest/logs/worker-*.out")):
        lines += [line for line in path.read_text(errors="replace").splitlines() if text in line]
    return lines
