"""Abstention with a cost guarantee: conformal risk control of the cost of automated decisions.

Conformal risk control (Angelopoulos, Bates, Fisch, Lei, Schuster, "Conformal Risk Control",
arXiv 2208.02814, ICLR 2024) controls the expected value of a bounded loss that is monotone in a
parameter, over calibration and test points that are exchangeable: the procedure generalises
split conformal prediction and is tight up to an O(1/n) factor. Here a case is decided by the
model when the expected cost of its decision (under the calibrated probabilities) is below a
threshold t, and otherwise goes to a person; its loss is the cost of the model's decision when
decided, 0 when not::

    L_i(t) = c(y_i, z_i) * [s_i < t],     s_i = sum_y p(y | x_i) c(y, z_i),   0 <= L_i <= B,

B the largest cost in the matrix. L_i grows with t (the paper's non-increasing loss in lambda =
-t). On n calibration cases the threshold is the largest t with

    (n / (n + 1)) * R_n(t) + B / (n + 1) <= alpha,    R_n(t) = (1/n) sum_i L_i(t),

the finite-sample correction being the B / (n + 1) term and the n / (n + 1) factor; then the
expected loss of a new case, over the draw of the calibration cases and the new one, is at most
alpha. Nothing below B / (n + 1) can be promised: then every case goes to a person.

Thresholds: the risk above only changes at calibration scores, so the largest admissible t is
one of them (deciding the cases scored strictly below it) or +inf (deciding everything), returned
as None. Pure numpy: arrays in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError


class ConformalError(UserError):
    """Calibration data or a promise that conformal risk control cannot work with."""


def _check(losses: np.ndarray, scores: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    losses, scores = np.asarray(losses, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if losses.ndim != 1 or losses.shape != scores.shape or losses.size == 0:
        raise ConformalError(f"losses and scores must be 1-D, of equal non-zero length; got {losses.shape} "
                             f"and {scores.shape}")
    if not (np.isfinite(losses).all() and np.isfinite(scores).all()):
        raise ConformalError("losses and scores must be finite")
    if not (math.isfinite(bound) and bound > 0) or losses.min() < 0 or losses.max() > bound:
        raise ConformalError(f"every loss must lie in [0, B] with B = {bound!r} > 0 the largest possible loss; "
                             f"got losses in [{losses.min():g}, {losses.max():g}]")
    return losses, scores


def crc_threshold(losses: np.ndarray, scores: np.ndarray, max_cost: float, bound: float) -> float | None:
    """The largest threshold t (module doc) whose corrected calibration risk is at most ``max_cost``.

    ``losses[i]`` is the cost of the model's decision on calibration case i (what deciding it
    costs), ``scores[i]`` the expected cost the model predicted for it, ``bound`` the largest
    possible cost B. Cases are decided when their score is strictly below t; None means every case
    is decided (t = +inf); when not even deciding nothing meets ``max_cost`` (B / (n + 1) > alpha)
    the result is 0.0, below every score: every case goes to a person.
    """
    losses, scores = _check(losses, scores, bound)
    if not (isinstance(max_cost, (int, float)) and math.isfinite(max_cost) and max_cost > 0):
        raise ConformalError(f"max_cost must be a number > 0, got {max_cost!r}")
    n = losses.size
    order = np.argsort(scores, kind="stable")
    sorted_scores, cumulative = scores[order], np.concatenate([[0.0], np.cumsum(losses[order])])
    candidates, first = np.unique(sorted_scores, return_index=True)
    below = cumulative[first]  # the losses of the cases scored strictly below each candidate
    thresholds = np.append(candidates, np.inf)
    corrected = (np.append(below, cumulative[-1]) + bound) / (n + 1)  # = n/(n+1) R_n(t) + B/(n+1)
    admissible = np.flatnonzero(corrected <= max_cost)  # corrected grows with t: a prefix
    if admissible.size == 0:
        return 0.0
    best = thresholds[admissible[-1]]
    return None if math.isinf(best) else float(best)


def decided(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which cases the model decides: score strictly below the threshold (all when None)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.ones(scores.shape, dtype=bool) if threshold is None else scores < threshold


@dataclass(frozen=True)
class Outcome:
    """What a threshold does on labelled cases: mean cost per case (abstentions cost 0), the
    share abstained, and the mean cost of the decided cases."""

    n: int
    cost_per_case: float
    abstention_rate: float
    cost_per_decided_case: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"n": self.n, "cost_per_case": self.cost_per_case, "abstention_rate": self.abstention_rate,
                "cost_per_decided_case": self.cost_per_decided_case}


def outcome(losses: np.ndarray, scores: np.ndarray, threshold: float | None, bound: float) -> Outcome:
    losses, scores = _check(losses, scores, bound)
    mask = decided(scores, threshold)
    kept = int(mask.sum())
    return Outcome(n=int(losses.size), cost_per_case=float((losses * mask).mean()),
                   abstention_rate=(losses.size - kept) / losses.size,
                   cost_per_decided_case=float(losses[mask].mean()) if kept else None)


def abstention_curve(losses: np.ndarray, scores: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """(abstention rate, cost per case) for every threshold that changes what is decided on these
    cases, from abstaining on everything to deciding everything, abstention decreasing."""
    losses, scores = _check(losses, scores, bound)
    n = losses.size
    order = np.argsort(scores, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(losses[order])])
    _, first = np.unique(scores[order], return_index=True)
    kept = np.append(first, n)  # cases decided at each threshold: those scored below it
    return (n - kept) / n, cumulative[kept] / n
