"""Targeted projected gradient ascent with rejection (Algorithm 1 of the paper).

For a sample (x, y) and a target class z the attack looks for a perturbation delta
with ||delta|| <= eps that raises log p_z(x + delta). What makes it different from
PGD is the rejection rule: the point must stay between the two classes of the pair.

* Only samples the model classifies correctly are moved (Algorithm 1, line 3).
* A step whose prediction leaves {y, z} is rejected and the previous iterate is
  returned (line 9-10); a step that reaches z stops there (line 11-12).
* At most K steps (line 6).

Every sample of a batch advances together with its own target class. Samples that
stop drop out of the active set, so later steps only pay for samples still moving.
The forward pass of step k + 1 also serves as the prediction check of step k, so an
attack of K steps costs at most K + 1 forward and K backward passes.

The model is run in eval mode (BatchNorm uses its running statistics, dropout is
off) with ``requires_grad`` switched off on its parameters, so the backward pass
only computes input gradients. Train/eval flags, ``requires_grad`` flags, buffers and
submodules are exactly as they were afterwards, even when the model raises.

Cost of a step. In eval mode every BatchNorm is a fixed affine map, so by default it is
folded into the convolution or linear layer before it for the duration of the attack
(``pipeline.method.fusion``; same function, no BatchNorm passes). The backward pass starts from
the closed-form gradient of log p_z with respect to the logits, onehot(z) - softmax.
Bookkeeping (outcomes, accepted iterates, the active set) is only touched at steps where
some sample stops. ``bench/attack.py`` measures the result.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.method.fusion import folded_batchnorm


class AttackOutcome(enum.IntEnum):
    """What Algorithm 1 did with one sample."""

    SKIPPED = 0  # misclassified before the attack: returned unmoved (line 3-4)
    SUCCEEDED = 1  # reached the target class (line 11-12)
    REJECTED = 2  # a step left {y, z}: the previous iterate is kept (line 9-10)
    EXHAUSTED = 3  # K steps taken, still predicted y (line 15)


class LinfBall:
    """Geometry of the L-infinity ball: projection is a coordinate-wise clip."""

    name = "linf"

    @staticmethod
    def project(delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)

    @staticmethod
    def steepest(grad: Tensor) -> Tensor:
        # The unit-L-inf direction of steepest ascent is the sign of the gradient.
        return grad.sign()


class L2Ball:
    """Geometry of the L2 ball: projection rescales vectors longer than eps."""

    name = "l2"

    @staticmethod
    def project(delta: Tensor, eps: float) -> Tensor:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (eps / norms).clamp(max=1.0)
        return delta * factor.view(-1, *([1] * (delta.dim() - 1)))

    @staticmethod
    def steepest(grad: Tensor) -> Tensor:
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / norms.view(-1, *([1] * (grad.dim() - 1)))


NORMS: dict[str, type[LinfBall] | type[L2Ball]] = {"linf": LinfBall, "l2": L2Ball}

# Algorithm 1, line 7 writes the raw gradient step eta2 * grad(log p_z). "gradient"
# follows it literally and is the default. "steepest" takes the normalised direction of
# the chosen norm instead (sign for L-inf, unit vector for L2), as PGD implementations
# usually do; then eta2 is a distance per step, independent of the gradient's scale.
STEP_RULES = ("gradient", "steepest")


@dataclass(frozen=True)
class AttackResult:
    """Perturbed inputs and what happened to each sample.

    ``delta`` is the returned perturbation (zero for skipped samples), ``steps_taken``
    the number of accepted ascent steps per sample. ``trajectory`` (only when asked
    for) holds the accepted iterate after each step, shape (steps + 1, *x.shape).
    """

    x_adv: Tensor
    delta: Tensor
    outcome: Tensor
    steps_taken: Tensor
    n_forward: int
    n_backward: int
    trajectory: Tensor | None = None

    def counts(self) -> dict[str, int]:
        """Number of samples per outcome, keyed by the outcome's lower-case name."""
        tally = torch.bincount(self.outcome.cpu(), minlength=len(AttackOutcome))
        return {o.name.lower(): int(tally[o.value]) for o in AttackOutcome}


@contextlib.contextmanager
def frozen_for_attack(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; every flag restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    grad_flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in grad_flags:
            param.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in grad_flags:
            param.requires_grad_(flag)


def _check_arguments(
    x: Tensor, y: Tensor, target: Tensor, eps: float, steps: int, step_size: float, norm: str, step_rule: str
) -> None:
    if x.dim() < 2:
        raise ValueError(f"x must be a batch with a leading sample dimension, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if y.shape != (n,) or target.shape != (n,):
        raise ValueError(
            f"y and target must have shape ({n},) to match x; got y {tuple(y.shape)} and target {tuple(target.shape)}"
        )
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (K) must be an integer >= 1, got {steps!r}")
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size (eta2) must be a finite number > 0, got {step_size!r}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(sorted(NORMS))}")
    if step_rule not in STEP_RULES:
        raise ValueError(f"unknown step_rule {step_rule!r}; known: {', '.join(STEP_RULES)}")
    same = y == target
    if bool(same.any()):
        first = int(same.nonzero()[0])
        raise ValueError(
            f"target equals the true class for sample {first} (class {int(y[first])}); "
            "a targeted attack needs target != y"
        )


def _class_indices(labels: Tensor, name: str) -> Tensor:
    """``labels`` as class indices (int64); fractional values are refused, not truncated."""
    if labels.is_floating_point() and bool((labels != labels.round()).any()):
        first = int((labels != labels.round()).nonzero()[0, 0])
        raise ValueError(f"{name} must hold class indices; sample {first} has {float(labels[first])!r}")
    return labels.to(torch.long)


def _check_classes(y: Tensor, target: Tensor, num_classes: int) -> None:
    """Every class index within the model's ``num_classes`` outputs."""
    for name, labels in (("y", y), ("target", target)):
        outside = (labels < 0) | (labels >= num_classes)
        if bool(outside.any()):
            first = int(outside.nonzero()[0, 0])
            raise ValueError(f"{name} of sample {first} is {int(labels[first])}; the model has {num_classes} "
                             f"classes: valid indices are 0 to {num_classes - 1}")


def _clamp_bounds(clamp: tuple[float | Tensor, float | Tensor] | None, like: Tensor) -> tuple[Tensor, Tensor] | None:
    if clamp is None:
        return None
    low, high = (torch.as_tensor(bound, dtype=like.dtype, device=like.device) for bound in clamp)
    if bool((low >= high).any()):
        raise ValueError(f"clamp must be (low, high) with low < high, got {clamp!r}")
    return low, high


@dataclass
class _Record:
    """What the attack returns, per sample; written only at the steps where some sample stops."""

    accepted: Tensor  # last accepted iterate
    outcome: Tensor
    steps_taken: Tensor
    trajectory: list[Tensor] | None

    @classmethod
    def start(cls, x: Tensor, steps: int, record_trajectory: bool) -> _Record:
        accepted = torch.zeros_like(x)
        n = x.shape[0]
        # A sample that never stops took all K steps; a stop overwrites both fields for that sample.
        return cls(accepted, torch.full((n,), int(AttackOutcome.EXHAUSTED), dtype=torch.long, device=x.device),
                   torch.full((n,), steps, dtype=torch.long, device=x.device),
                   [accepted.clone()] if record_trajectory else None)

    def stops(self, k: int, rows: Tensor, reached: Tensor, candidate: Tensor, previous: Tensor) -> None:
        """Samples ``rows`` stopped at step ``k``: at k = 0 they were misclassified (line 3), later
        they either reached z (line 11, keep the candidate) or left {y, z} (line 9, rejected: keep
        the previous iterate)."""
        if k == 0:
            self.outcome[rows] = int(AttackOutcome.SKIPPED)
            self.steps_taken[rows] = 0
            return
        self.outcome[rows] = torch.where(reached, int(AttackOutcome.SUCCEEDED), int(AttackOutcome.REJECTED))
        self.steps_taken[rows] = k - (~reached).long()
        row_shape = (-1, *([1] * (candidate.dim() - 1)))  # a per-sample flag broadcast over one sample
        self.accepted[rows] = torch.where(reached.view(row_shape), candidate, previous).detach()

    def moving(self, k: int, last: bool, active: Tensor, candidate: Tensor, moving: Tensor) -> None:
        """The samples still moving after step ``k`` (``active[moving]``): their candidate stands.
        Written only when a trajectory is kept or at the last step."""
        if k > 0 and (self.trajectory is not None or last):
            self.accepted[active[moving]] = candidate[moving].detach()
        if self.trajectory is not None and k > 0:
            self.trajectory.append(self.accepted.clone())


def _target_gradient(logits: Tensor, x_in: Tensor, target: Tensor) -> Tensor:
    """Line 7's ascent direction: the input gradient of log p_z. Its gradient with respect to the
    logits is onehot(z) - softmax(logits), so the backward pass starts there. Rows are independent
    in eval mode: each sample gets its own gradient."""
    probabilities = torch.softmax(logits.detach(), dim=1)
    column = target[:, None]
    logit_grad = probabilities.neg_().scatter_add_(1, column, torch.ones_like(column, dtype=probabilities.dtype))
    (grad,) = torch.autograd.grad(logits, x_in, logit_grad)
    return grad


def targeted_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: Tensor | int,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    clamp: tuple[float | Tensor, float | Tensor] | None = None,
    step_rule: str = "gradient",
    record_trajectory: bool = False,
    fold_batchnorm: bool = True,
) -> AttackResult:
    """Algorithm 1 on a batch: move each correctly classified x_i towards class target_i.

    ``clamp`` = (low, high) keeps x + delta inside the valid input range (scalars or
    tensors broadcastable to one sample). The result's ``x_adv`` is detached.
    ``fold_batchnorm`` runs the frozen model with its eval-mode BatchNorms folded into the
    layers before them (``pipeline.method.fusion``): the same function, fewer passes per step.
    """
    y = _class_indices(y, "y").to(device=x.device)
    if isinstance(target, int):
        target = torch.full_like(y, target)
    target = _class_indices(target, "target").to(device=x.device)
    _check_arguments(x, y, target, eps, steps, step_size, norm, step_rule)
    ball = NORMS[norm]
    x = x.detach()
    bounds = _clamp_bounds(clamp, x)
    record = _Record.start(x, steps, record_trajectory)

    # The samples still moving: their indices, inputs, classes, targets, iterate under test, last accepted one.
    active = torch.arange(x.shape[0], device=x.device)
    x_active, y_active, z_active = x, y, target
    candidate = previous = torch.zeros_like(x)
    n_forward = n_backward = 0
    folding = folded_batchnorm(model) if fold_batchnorm else contextlib.nullcontext()
    with frozen_for_attack(model), folding, torch.enable_grad():
        for k in range(steps + 1):
            x_in = (x_active + candidate).requires_grad_(k < steps)
            logits = model(x_in)
            n_forward += 1
            if k == 0:
                _check_classes(y, target, logits.shape[1])
            # A prediction other than y stops the sample (see _Record.stops).
            pred = logits.argmax(dim=1)
            stop = pred != y_active
            n_stopped = int(stop.sum())
            if n_stopped:
                record.stops(k, active[stop], pred[stop] == z_active[stop], candidate[stop], previous[stop])
            moving = ~stop
            record.moving(k, k == steps, active, candidate, moving)
            if k == steps or n_stopped == len(active):
                break
            grad = _target_gradient(logits, x_in, z_active)
            n_backward += 1
            previous = candidate.detach()
            if n_stopped:  # stopped rows are dropped after the backward pass
                active, x_active, y_active, z_active = (t[moving] for t in (active, x_active, y_active, z_active))
                grad, previous = grad[moving], previous[moving]
            step = grad if step_rule == "gradient" else ball.steepest(grad)
            # Line 8: project onto the eps-ball around x.
            candidate = ball.project(torch.add(previous, step, alpha=step_size), eps)
            if bounds is not None:
                candidate = torch.clamp(x_active + candidate, *bounds) - x_active

    trajectory = record.trajectory
    if trajectory is not None:
        while len(trajectory) < steps + 1:  # every sample stopped early: pad with the final iterate
            trajectory.append(record.accepted.clone())
    return AttackResult(
        x_adv=(x + record.accepted).detach(),
        delta=record.accepted,
        outcome=record.outcome,
        steps_taken=record.steps_taken,
        n_forward=n_forward,
        n_backward=n_backward,
        trajectory=torch.stack(trajectory) if trajectory is not None else None,
    )
