"""A stage stops when what it runs under goes away: the ``dvc`` process that started it, or the
Ray cluster it trains on.

``kill -9`` of ``dvc repro`` leaves its stage running: the stage's parent is a shell that DVC
started, or the stage itself, and neither hears of it. An orphaned stage would go on training
(its local Ray cluster with it) and race the next ``dvc repro`` for the same run folders. So a
stage started under ``dvc`` watches the chain of processes from its parent up to that ``dvc``
and, once one of them is gone, says so and exits; Ray's processes share the fate of
the process that started them, and the run folders' locks (pipeline.runs.runlocks) die with it.

A stage started without ``dvc`` above it (``python stages/x.py``, ``nohup``) is not watched:
closing a terminal must not stop a run the user detached on purpose.

A stage that joined a Ray cluster (:func:`watch_cluster`) ends, with one line and exit status 2,
once the cluster's head has not answered for :data:`CLUSTER_LOST_AFTER_S`. Left alone, Ray's
driver waits 60 s, prints a C++ error and exits with status 1, and its main thread sits in Ray's
C++ code meanwhile, deaf to a Python signal handler: so the watching thread ends the process
itself, as for a lost ``dvc``. The runs' checkpoints stay where they are; the next run resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

POLL_S = 1.0
# A cluster whose head (its GCS port) refuses or ignores connections this long is gone.
CLUSTER_LOST_AFTER_S = 10.0
CLUSTER_POLL_S = 2.0
# The stage this process is running (pipeline.stage.run_stage, through `running`), for the line a
# lost cluster ends it with; empty outside a stage (a test that calls the pipeline's functions).
_stage: list[str] = []


@contextlib.contextmanager
def running(stage: str) -> Iterator[None]:
    """Mark this process as running ``stage`` while the block runs (see :func:`watch_cluster`)."""
    _stage.append(stage)
    try:
        yield
    finally:
        _stage.pop()


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc; None when it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name in (...) may hold spaces
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    names = [os.path.basename(arg.decode(errors="replace")) for arg in argv[:3]]
    return "dvc" in names


def dvc_chain(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, start time) of each ancestor of ``pid`` (default: this process) up to the nearest
    ``dvc`` process, inclusive; empty when no ``dvc`` is above it or /proc is absent."""
    chain: list[tuple[int, str]] = []
    current = _stat(os.getpid() if pid is None else pid)
    while current is not None and current[0] > 1:
        parent = current[0]
        current = _stat(parent)
        if current is None:
            return []
        chain.append((parent, current[1]))
        if _is_dvc(parent):
            return chain
    return []


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def stop_now(status: int = 1) -> None:
    """End this process and every process it started (a local Ray cluster: its GCS, raylet,
    agents and trial workers), at once: SIGTERM would have Ray print stack dumps and wait for
    cleanups nobody needs. The run folders' locks die with us, and what a write left half done is
    removed by the next run (RunStore.remove_partials)."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(status)


def stop_stage(problem: str) -> None:
    """End the stage this process runs, with ``error in stage <name>: <problem>`` (the line
    :func:`pipeline.stage.run_stage` prints) and exit status 2, from any thread; outside a stage
    (a test that calls the pipeline's functions) do nothing, and leave it to the caller."""
    if _stage:
        print(f"error in stage {_stage[-1]}: {problem}", file=sys.stderr, flush=True)
        stop_now(2)


def answers(host: str, port: int, timeout_s: float = CLUSTER_POLL_S) -> bool:
    """Whether something accepts a TCP connection at ``host:port`` within ``timeout_s``."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def watch_cluster(gcs_address: str, lost: str) -> threading.Thread | None:
    """End this process with ``error in stage <name>: <lost>`` (the line :func:`pipeline.stage.run_stage`
    prints) and exit status 2 once the GCS at ``gcs_address`` (host:port) has not answered for
    :data:`CLUSTER_LOST_AFTER_S`, while a stage runs (:func:`running`); the watching thread, or
    None outside a stage: a test process outlives the clusters it joins."""
    if not _stage:
        return None
    host, port = gcs_address.rsplit(":", 1)
    host = host.strip("[]")  # an IPv6 address: [::1]:6379

    def loop() -> None:
        answered = time.monotonic()
        while _stage:
            time.sleep(CLUSTER_POLL_S)
            if answers(host, int(port)):
                answered = time.monotonic()
            elif time.monotonic() - answered >= CLUSTER_LOST_AFTER_S:
                stop_stage(lost)

    thread = threading.Thread(target=loop, name="csada-cluster-watch", daemon=True)
    thread.start()
    return thread


def watch(stage: str, chain: list[tuple[int, str]] | None = None) -> threading.Thread | None:
    """End this process (exit status 1) once a process of ``chain`` (default: :func:`dvc_chain`)
    is gone or replaced; the watching thread, or None when there is nothing to watch."""
    chain = dvc_chain() if chain is None else chain
    if not chain:
        return None

    def loop() -> None:
        while True:
            time.sleep(POLL_S)
            for pid, started in chain:
                now = _stat(pid)
                if now is None or now[1] != started:
                    print(f"stage {stage}: its dvc process (pid {chain[-1][0]}) is gone: stopping, with its "
                          "training runs", file=sys.stderr, flush=True)
                    stop_now()

    thread = threading.Thread(target=loop, name="csada-lifeline", daemon=True)
    thread.start()
    return thread
