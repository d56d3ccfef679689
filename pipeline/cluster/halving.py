"""Successive halving with every decision made in trial order: the search's early stopping.

ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning") stops a trial at
a rung (an epoch count) when its score is not among the best ``1 / reduction_factor`` of the
scores recorded at that rung so far. Asynchronous, "so far" means "by the trials that happened to
get there first", so the same trials can be stopped differently from one run to the next. Here
a trial is judged against the trials proposed *before* it, and only once each of those has
either recorded its score at the rung or ended below it: the decision is then the same whatever
order the results arrive in. Run one trial at a time, no decision ever waits, and every decision
is the one Ray Tune's ``ASHAScheduler`` makes on the same sequence of trials.

A trial's score at a rung is the best (lowest) it reached up to that epoch: the search chooses a
trial by its best epoch, so a noisy epoch at the rung does not stop a trial whose earlier epoch
was good. Pure logic: no clock, no Ray, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class Decision(Enum):
    CONTINUE = "continue"
    STOP = "stop"
    WAIT = "wait"  # an earlier trial has not reached this rung yet: ask again once it has


def rungs(max_epochs: int, grace_epochs: int, reduction_factor: float) -> tuple[int, ...]:
    """The epoch counts at which trials are judged: ``grace * rf**k`` below ``max_epochs``
    (Ray Tune's ASHA rungs for one bracket)."""
    if grace_epochs < 1 or max_epochs < 1 or reduction_factor <= 1:
        raise ValueError(f"successive halving needs grace >= 1, max >= 1 and reduction factor > 1; got "
                         f"{grace_epochs}, {max_epochs}, {reduction_factor}")
    milestones, epochs = [], float(grace_epochs)
    while round(epochs) < max_epochs:
        milestones.append(round(epochs))
        epochs *= reduction_factor
    return tuple(milestones)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class SuccessiveHalving:
    """The rungs' records of one search. Trials are numbered 0, 1, ... in the order they were
    proposed, so every trial numbered below another was proposed before it."""

    milestones: tuple[int, ...]
    reduction_factor: float = 3.0
    # rung -> trial number -> the trial's best score up to the rung
    recorded: dict[int, dict[int, float]] = field(default_factory=dict)
    ended: dict[int, int] = field(default_factory=dict)  # trial number -> epochs it ran

    def end(self, trial: int, epochs_run: int) -> None:
        """The trial ran its last epoch, was stopped, or failed after ``epochs_run`` epochs."""
        self.ended[trial] = epochs_run

    def judge(self, trial: int, epochs_run: int, best_score: float) -> Decision:
        """Whether ``trial``, after ``epochs_run`` epochs with ``best_score`` so far, goes on.

        At a rung the score is recorded (once) and compared with those of the earlier trials:
        the trial stops when it is worse than their ``1 / reduction_factor`` quantile. WAIT when
        an earlier trial is still running below the rung: its score may yet count."""
        if epochs_run not in self.milestones:
            return Decision.CONTINUE
        if any(t not in self.ended and t not in self.recorded.get(epochs_run, {}) for t in range(trial)):
            return Decision.WAIT
        rung = self.recorded.setdefault(epochs_run, {})
        rung[trial] = best_score
        before = [score for t, score in rung.items() if t < trial]
        if before and best_score > percentile(before, 100.0 / self.reduction_factor):
            return Decision.STOP
        return Decision.CONTINUE
