"""One trainer per run: a lock on each run folder for as long as a stage trains it.

The stage that trains a run holds ``<run folder>/trainer.lock`` with ``flock``: the kernel drops
the lock when the holding process dies, however it dies, so a lock left by a killed stage is
taken over at once and never needs cleaning up. A second stage (another ``dvc repro``, or one
started while an orphaned stage still trains) waits :data:`LOCK_WAIT_S` for the holder to
finish or die, then stops with a message that names the holder. The file itself records who
holds it, for that message.

Only local run folders are locked here. A run folder on S3 gets a lease instead
(``pipeline.cluster.leases``: a conditionally written object that its holder renews), with the
same wait and a message of the same kind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserError

LOCK_FILE = "trainer.lock"
# How long a stage waits for a run another process holds: long enough for an orphaned stage to
# notice that its dvc process died and stop (pipeline.cluster.lifeline checks every second).
LOCK_WAIT_S = float(os.environ.get("CSADA_LOCK_WAIT_S", "15"))


class RunBusyError(UserError):
    """A run that another live process is training."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"process {info.get('pid')} on {info.get('host')} ({info.get('command', '?')})"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding ``path``'s lock, or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    return fd


@contextlib.contextmanager
def locked_runs(folders: list[Path], wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the lock of every run folder in ``folders`` (local paths) while the block runs."""
    held: list[int] = []
    try:
        for folder in folders:
            path = folder / LOCK_FILE
            deadline = time.monotonic() + wait_s
            while (fd := _try_lock(path)) is None:
                if time.monotonic() >= deadline:
                    raise RunBusyError(f"run {folder.name} is being trained by {_holder(path)}; wait for it to "
                                       "finish, or stop that process, then run the stage again")
                time.sleep(0.5)
            held.append(fd)
        yield
    finally:
        for fd in held:
            os.close(fd)  # closing the descriptor releases its lock
