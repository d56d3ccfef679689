"""Decision rules: turn a model's scores into predicted classes.

``argmax`` is the ordinary cost-blind rule. ``expected_cost`` is the Bayes rule of classical
cost-sensitive learning (the first family of methods in the paper's Sec. 2.1): predict the
class whose expected cost sum_y p(y | x) c(y, z) is smallest. Comparing the two on the same
model separates what training bought from what a post-hoc decision rule buys.
``calibrated_expected_cost`` is the same Bayes rule on temperature-scaled probabilities
softmax(logits / T), with T fitted per model on validation (:mod:`pipeline.method.calibration`): the
raw softmax of a network trained to zero loss is over-confident. Which of the three serves a
model best is itself chosen on validation; calibration is not assumed to help.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pipeline.errors import UserError
from pipeline.method.costs import CostMatrix


class DecisionError(UserError):
    """Scores and a cost matrix that do not fit together, or an unknown decision rule."""


def _check_scores(scores: Tensor, name: str) -> None:
    if not isinstance(scores, Tensor) or scores.ndim != 2 or scores.shape[1] < 1:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise DecisionError(f"{name} must be a 2-D tensor [N, K] with K >= 1, got {shape}")


def _cost_tensor(cost: Tensor | CostMatrix, like: Tensor) -> Tensor:
    """The cost matrix as a tensor on ``like``'s device and dtype, checked against its K."""
    if isinstance(cost, CostMatrix):
        cost = cost.as_tensor()
    k = like.shape[1]
    if not isinstance(cost, Tensor) or cost.ndim != 2 or tuple(cost.shape) != (k, k):
        shape = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
        raise DecisionError(f"cost must be a {k} x {k} matrix to match {k} classes in the scores, got {shape}")
    return cost.to(dtype=like.dtype, device=like.device)


def argmax_decision(scores: Tensor) -> Tensor:
    """Index of the largest score per row; ties go to the lowest class index."""
    _check_scores(scores, "scores")
    return scores.argmax(dim=1)


def expected_costs(probs: Tensor, cost: Tensor | CostMatrix) -> Tensor:
    """Expected cost of each possible prediction: out[n, z] = sum_y probs[n, y] * cost[y, z]."""
    _check_scores(probs, "probs")
    if not probs.is_floating_point():
        raise DecisionError(f"probs must be a floating-point tensor, got {probs.dtype}")
    return probs @ _cost_tensor(cost, probs)


def expected_cost_decision(probs: Tensor, cost: Tensor | CostMatrix) -> Tensor:
    """The class with the smallest expected cost per row (Bayes decision under ``cost``).

    Exact ties go to the lowest class index. Rows of ``probs`` need not be normalised:
    scaling a row by a positive constant does not change its minimiser.
    """
    return expected_costs(probs, cost).argmin(dim=1)


def _argmax_rule(logits: Tensor, cost: Tensor | CostMatrix) -> Tensor:
    del cost  # the cost-blind rule; the argument keeps every rule's signature the same
    return argmax_decision(logits)


def _expected_cost_rule(logits: Tensor, cost: Tensor | CostMatrix) -> Tensor:
    _check_scores(logits, "logits")
    # Half-precision softmax loses the small probabilities that decide expected costs.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return expected_cost_decision(torch.softmax(logits.to(dtype), dim=1), cost)


DecisionRule = Callable[[Tensor, "Tensor | CostMatrix"], Tensor]

DECISION_RULES: dict[str, DecisionRule] = {
    "argmax": _argmax_rule,
    "expected_cost": _expected_cost_rule,
    "calibrated_expected_cost": _expected_cost_rule,  # on logits / T: see decide
}
# The rules that read the model's fitted temperature.
CALIBRATED_RULES = frozenset({"calibrated_expected_cost"})


def decide(rule: str, logits: Tensor, cost: Tensor | CostMatrix, temperature: float = 1.0) -> Tensor:
    """Predicted class indices (LongTensor [N]) from ``logits`` under the named rule.

    ``temperature`` (the model's T from :func:`pipeline.method.calibration.fit_temperature`) scales the
    logits of the calibrated rules only.
    """
    if rule not in DECISION_RULES:
        raise DecisionError(f"unknown decision rule {rule!r}; known: {', '.join(sorted(DECISION_RULES))}")
    if rule in CALIBRATED_RULES:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise DecisionError(f"temperature must be a finite number > 0, got {temperature!r}")
        logits = logits / temperature
    return DECISION_RULES[rule](logits, cost)
