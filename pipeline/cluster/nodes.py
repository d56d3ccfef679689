"""Nodes that leave the cluster while a stage trains, and what became of the runs on them.

A Ray node that dies (its machine lost or preempted, its raylet killed) takes the trials and
Ray Train workers on it along. Ray Tune retries a trial it lost and Ray Train restarts a worker
group that lost a worker (both ``FailureConfig(max_failures=...)``, see
:mod:`pipeline.cluster.distributed`); either way the run resumes from its run folder's
checkpoint on the nodes left, or on a node that joins. A person reads one line per lost node,
once every run that was training when it left has reported an epoch again or ended::

    node 3f2a9c1e (10.0.0.7) left the cluster: 1 run resumed on the other nodes from its checkpoint (digits-ap-r0 after epoch 4)

A run counts as resumed when its next epoch carries a higher ``resumes`` count than its last one
before the loss (every epoch's metrics carry it: :func:`pipeline.runs.train.run_epoch`). "After
epoch N" is where it picked up; epochs it reported before the loss and trained again after it
(more than a checkpoint interval lost) are counted in the line.

:class:`NodeWatch` is the bookkeeping alone, without Ray: the stage's Tune callback
(:mod:`pipeline.cluster.progress`) feeds it the nodes alive and the runs' epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SHOWN_ID_CHARS = 8  # of a node's 56 hex digits, as few as tell the nodes of a cluster apart


@dataclass(frozen=True)
class RunSeen:
    """A run's last reported epoch (-1 before its first) and its ``resumes`` count then."""

    epoch: int = -1
    resumes: int = 0


@dataclass(frozen=True)
class Resumed:
    run: str
    after_epoch: int | None  # the first epoch trained after the loss; None: it had no epoch left
    redone: int = 0  # epochs reported before the loss and trained again after it


@dataclass
class LostNode:
    """A node that left, the runs training when it did (as seen then), and those that resumed."""

    node_id: str
    address: str
    waiting: dict[str, RunSeen]
    resumed: list[Resumed] = field(default_factory=list)
    retried: set[str] = field(default_factory=set)  # runs whose trial Ray Tune started again

    def line(self) -> str:
        """The one line a person reads about this node."""
        node = f"node {self.node_id[:SHOWN_ID_CHARS]} ({self.address}) left the cluster"
        unresolved = f"; {_runs(len(self.waiting))} had not reported again when the stage ended" if self.waiting else ""
        if self.resumed:
            whose = "its checkpoint" if len(self.resumed) == 1 else "their checkpoints"
            details = ", ".join(_detail(entry) for entry in self.resumed)
            return f"{node}: {_runs(len(self.resumed))} resumed on the other nodes from {whose} ({details}){unresolved}"
        return node + (unresolved or "; no run was training on it")


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def _detail(entry: Resumed) -> str:
    if entry.after_epoch is None:
        return f"{entry.run} finished"
    redone = "" if not entry.redone else f", {entry.redone} epoch{'s' if entry.redone > 1 else ''} trained again"
    return f"{entry.run} after epoch {entry.after_epoch}{redone}"


class NodeWatch:
    """Which nodes left while runs trained, and whether each run training then resumed.

    :meth:`epoch` and :meth:`ended` return the lines now complete (each lost node's, once);
    :meth:`flush` the rest, when the sweep ends.
    """

    def __init__(self) -> None:
        self.alive: dict[str, str] = {}  # node id -> address, as last seen
        self.gone: set[str] = set()  # never alive again: a node that rejoins has a new id
        self.training: dict[str, RunSeen] = {}  # runs started and not ended
        self.lost: list[LostNode] = []  # not yet said

    def nodes(self, alive: Mapping[str, str]) -> None:
        """The nodes alive now (id -> address): one seen alive before and missing now has left."""
        left = [node_id for node_id in self.alive if node_id not in alive]
        self.lost += [LostNode(node_id, self.alive[node_id], dict(self.training)) for node_id in left]
        self.gone.update(left)
        self.alive = {node_id: address for node_id, address in alive.items() if node_id not in self.gone}

    def started(self, run: str) -> None:
        self.training.setdefault(run, RunSeen())

    def resumed_since(self, run: str, resumes: int) -> bool:
        """Whether an epoch of ``run`` with this ``resumes`` count shows a restart since its last one."""
        return resumes > self.training.get(run, RunSeen()).resumes

    def retried(self, run: str) -> bool:
        """Ray Tune started ``run``'s trial again; whether a lost node explains it (then its line tells it)."""
        explained = [lost for lost in self.lost if run in lost.waiting]
        for lost in explained:
            lost.retried.add(run)
        return bool(explained)

    def epoch(self, run: str, epoch: int, resumes: int) -> list[str]:
        for lost in self.lost:
            before = lost.waiting.pop(run, None)
            # A run that had reported no epoch yet resumed only if Tune restarted it: its count may
            # stem from an earlier invocation of the stage.
            if before is not None and (resumes > before.resumes if before.epoch >= 0 else run in lost.retried):
                lost.resumed.append(Resumed(run, epoch, max(0, before.epoch + 1 - epoch)))
        self.training[run] = RunSeen(epoch, resumes)
        return self._complete()

    def ended(self, run: str) -> list[str]:
        """``run`` finished (or failed) without reporting another epoch."""
        self.training.pop(run, None)
        for lost in self.lost:
            if lost.waiting.pop(run, None) is not None and run in lost.retried:
                lost.resumed.append(Resumed(run, None))
        return self._complete()

    def flush(self) -> list[str]:
        lines = [lost.line() for lost in self.lost]
        self.lost = []
        return lines

    def _complete(self) -> list[str]:
        done = [lost for lost in self.lost if not lost.waiting]
        self.lost = [lost for lost in self.lost if lost.waiting]
        return [lost.line() for lost in done]
