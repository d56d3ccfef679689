"""The training objectives the paper compares CSADA with: ERM, the penalty method (objective
(3)), AP and SOSR, and what every objective shares (the ``TrainingMethod`` protocol, the
``MethodContext`` a run hands it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import UserError

Stats = dict[str, Tensor]


class MethodError(UserError):
    """An unknown method, or options a method cannot work with."""


class TrainingMethod(Protocol):
    name: str

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def start_epoch(self, seed: int) -> None: ...

    needs_start_predictions: bool

    def start_training(self, val_logits: Tensor, val_labels: Tensor) -> None: ...

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]: ...


@dataclass(frozen=True)
class MethodContext:
    """What a method may take from the run that builds it, besides its own options."""

    cost: Tensor | None = None  # K x K, c(y, z) in row y, column z
    input_bounds: tuple[Tensor, Tensor] | None = None  # the valid input range, in model units
    seed: int = 0  # the run's seed: the same on every DDP rank


def log_one_minus_softmax(logits: Tensor) -> Tensor:
    """log(1 - p_z) for every class z, computed without forming 1 - p (stable when p_z -> 1).

    1 - p_z = sum_{j != z} exp(l_j) / sum_j exp(l_j), so its log is a log-sum-exp over the
    other classes minus the full log-sum-exp.
    """
    k = logits.shape[1]
    others = logits.unsqueeze(1).expand(-1, k, -1).masked_fill(
        torch.eye(k, dtype=torch.bool, device=logits.device), float("-inf")
    )
    return torch.logsumexp(others, dim=2) - torch.logsumexp(logits, dim=1, keepdim=True)


def cost_penalty(logits: Tensor, y: Tensor, cost: Tensor) -> Tensor:
    """Per-sample -sum_z c(y, z) log(1 - p_z): objective (3) generalised to a cost matrix."""
    return -(cost[y] * log_one_minus_softmax(logits)).sum(dim=1)


class _Plain:
    """Defaults: the model as built, nothing random of the method's own to reseed, nothing to
    learn from the starting model's predictions."""

    # Whether the run hands :meth:`start_training` the starting model's validation outputs.
    needs_start_predictions = False

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def start_training(self, val_logits: Tensor, val_labels: Tensor) -> None:
        del val_logits, val_labels

    def start_epoch(self, seed: int) -> None:
        del seed


@dataclass
class ERM(_Plain):
    """Plain cross-entropy: the baseline."""

    name: str = field(default="erm", init=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        ce = F.cross_entropy(model(x), y)
        return ce, {"ce": ce.detach()}


PENALTY_NORMALIZATIONS = ("batch", "class")


@dataclass
class Penalty(_Plain):
    """Objective (3) generalised: -sum_z c(y_i, z) log(1 - p_z(x_i)) per sample, no cross-entropy.

    ``normalization`` "batch" (default) averages it over the batch; "class" averages it over the
    samples of each true class and sums the classes, as the authors' pair-sweep code does (for a
    single costly pair (a, b): the mean of -log(1 - p_b) over the batch's class-a samples).
    """

    cost: Tensor
    normalization: str = "batch"
    name: str = field(default="penalty", init=False)

    def __post_init__(self) -> None:
        if self.normalization not in PENALTY_NORMALIZATIONS:
            raise MethodError(f"normalization must be one of {', '.join(PENALTY_NORMALIZATIONS)}; "
                              f"got {self.normalization!r}")

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        per_sample = cost_penalty(model(x), y, self.cost.to(x.device))
        if self.normalization == "batch":
            penalty = per_sample.mean()
        else:
            counts = torch.bincount(y, minlength=self.cost.shape[0]).to(per_sample.dtype)
            penalty = (per_sample / counts[y]).sum()
        return penalty, {"penalty": penalty.detach()}


@dataclass
class AdjustedPenalty(_Plain):
    """AP (section 5.2): cross-entropy + alpha * the cost penalty."""

    cost: Tensor
    alpha: float = 5.0
    name: str = field(default="ap", init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise MethodError(f"alpha must be a finite number >= 0, got {self.alpha!r}")

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        penalty = cost_penalty(logits, y, self.cost.to(x.device)).mean()
        return ce + self.alpha * penalty, {"ce": ce.detach(), "penalty": penalty.detach()}


def sosr_loss(regressed_costs: Tensor, y: Tensor, cost: Tensor) -> Tensor:
    """Smooth one-sided regression (Chung et al., CSDNN), per sample.

    For each class k the regressed cost r_k is pushed below c(y, k) when k is one of the
    cheapest classes for y (sign +1) and above it otherwise (sign -1), through
    softplus(sign * (r_k - c(y, k))). Prediction is argmin_k r_k.
    """
    target = cost[y]
    cheapest = target == target.min(dim=1, keepdim=True).values
    sign = cheapest.to(regressed_costs.dtype) * 2 - 1
    return F.softplus(sign * (regressed_costs - target)).sum(dim=1)


@dataclass
class SOSR(_Plain):
    """The regression-layer baseline (CNNSOSR): a linear head regresses per-class costs.

    The wrapped model's forward returns scores = -r(x), so argmax of the scores is the
    argmin of the regressed costs and the rest of the pipeline needs no special case.
    """

    cost: Tensor
    name: str = field(default="sosr", init=False)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from pipeline.models.networks import CostRegressionModel

        if isinstance(model, CostRegressionModel):
            return model
        return CostRegressionModel(model, self.cost.shape[0])

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        loss = sosr_loss(-model(x), y, self.cost.to(x.device)).mean()
        return loss, {"sosr": loss.detach()}


def _check_cost(cost: Tensor, method: str) -> None:
    """What the derived matrices below rely on: a K x K matrix of finite costs >= 0, zero on the diagonal."""
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise MethodError(f"{method}: the cost must be a K x K matrix, got shape {tuple(cost.shape)}")
    on_diagonal = torch.eye(cost.shape[0], dtype=torch.bool, device=cost.device)
    bad = ~torch.isfinite(cost) | (cost < 0) | (on_diagonal & (cost != 0))
    if bad.any():
        y, z = (int(i) for i in bad.nonzero()[0])
        raise MethodError(f"{method}: invalid cost c({y}, {z}) = {cost[y, z].item()!r}; "
                          "costs must be finite and >= 0, with c(y, y) = 0")
