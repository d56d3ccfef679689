"""Training objectives: ERM, CSADA (full and stochastic), the penalty method, AP, SOSR, cost-aware soft
labels and the logit-adjusted cost-sensitive loss.

Each method is a small object with one call, ``loss(model, x, y) -> (loss, stats)``,
so one training loop serves them all. What a method needs from the run that builds it (the cost
matrix, the valid input range, a seed) arrives once, at build time, in a :class:`MethodContext`;
``start_epoch(seed)`` is its per-epoch hook. Nothing outside this module asks which method it is. ``stats`` holds detached scalar tensors (no
``.item()`` on the hot path: the loop decides when to synchronise); keys starting with
``n_`` are counts, which the loop sums, the others are batch means, which it averages. A method that
needs a different output layer (SOSR) says so in ``prepare_model``.

Costs enter as a K x K tensor ``cost`` with c(y, z) in row y, column z.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.attacks import NORMS, STEP_RULES, AttackOutcome, targeted_attack
from pipeline.costs import pair_weights
from pipeline.errors import UserError
from pipeline.models import unwrap_model

Stats = dict[str, Tensor]


class MethodError(UserError):
    """An unknown method, or options a method cannot work with."""


class TrainingMethod(Protocol):
    name: str

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def start_epoch(self, seed: int) -> None: ...

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
    """Defaults: the model as built, nothing random of the method's own to reseed."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def start_epoch(self, seed: int) -> None:
        del seed


@dataclass
class ERM(_Plain):
    """Plain cross-entropy: the baseline."""

    name: str = field(default="erm", init=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        ce = F.cross_entropy(model(x), y)
        return ce, {"ce": ce.detach()}


@dataclass
class Penalty(_Plain):
    """Objective (3) generalised: mean_i -sum_z c(y_i, z) log(1 - p_z(x_i)), no cross-entropy."""

    cost: Tensor
    name: str = field(default="penalty", init=False)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        penalty = cost_penalty(model(x), y, self.cost.to(x.device)).mean()
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
        from pipeline.models import CostRegressionModel

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


def soft_label_targets(cost: Tensor, beta: float) -> Tensor:
    """Row y is q(. | y): q(z | y) = exp(-beta c(y, z)) / sum_j exp(-beta c(y, j))."""
    return torch.softmax(-beta * cost, dim=1)


@dataclass
class SoftLabels(_Plain):
    """Cost-aware soft labels, after Bertinetto et al., "Making Better Mistakes", CVPR 2020.

    loss = mean_i -sum_z q(z | y_i) log softmax(f(x_i))_z,  q(z | y) = exp(-beta c(y, z)) / sum_j exp(-beta c(y, j)).

    The paper puts a class-hierarchy distance where we put the cost c. As c(y, y) = 0 <= c(y, z),
    the true class has the largest mass, shared equally with every z of c(y, z) = 0: with a single
    costly pair (y', z'), every class but y' gets uniform targets. beta -> infinity gives one-hot
    targets wherever the off-diagonal costs are positive, i.e. plain cross-entropy; beta -> 0 gives
    uniform targets. beta multiplies the costs as given: scaling the costs by k is the same as
    scaling beta by k.

    Prediction is the argmax of the logits, as for ERM. The softmax is trained towards
    sum_y p(y | x) q(. | y), a cost-smoothed posterior, not p(. | x) itself (``scores_note``).
    """

    cost: Tensor
    beta: float = 5.0
    name: str = field(default="soft_labels", init=False)
    targets: Tensor = field(init=False, repr=False)  # K x K, row y = q(. | y)

    def __post_init__(self) -> None:
        number = isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool)
        if not (number and math.isfinite(self.beta) and self.beta > 0):
            raise MethodError(f"beta must be a finite number > 0, got {self.beta!r}")
        _check_cost(self.cost, self.name)
        # float64: exp(-beta c) of a large beta * c underflows in float32 before the normalisation
        self.targets = soft_label_targets(self.cost.to(torch.float64), self.beta).to(self.cost.dtype)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        logits = model(x)
        loss = F.cross_entropy(logits, self.targets.to(device=logits.device, dtype=logits.dtype)[y])
        return loss, {"soft_ce": loss.detach()}


def hybrid_weights(cost: Tensor) -> tuple[Tensor, Tensor]:
    """(M, log d) of the hybrid loss for the gain G(y, z) = a_y - c(y, z), decomposed as G = M diag(d).

    a_y = max_z c(y, z), the least offset that keeps every gain >= 0 (M >= 0 is what makes the
    loss calibrated); a row of zero costs takes the largest cost instead, since d_y = G(y, y) = a_y
    must be > 0. M(y, z) = G(y, z) / d_z.
    """
    row_max = cost.max(dim=1).values
    offset = torch.where(row_max > 0, row_max, cost.max())
    gain = offset[:, None] - cost
    d = gain.diagonal()  # = offset, as c(y, y) = 0
    return gain / d, d.log()


def logit_adjusted_loss(logits: Tensor, y: Tensor, weights: Tensor, log_d: Tensor) -> Tensor:
    """Per-sample hybrid loss: -sum_z M(y, z) log softmax(logits - log d)_z."""
    return -(weights[y] * F.log_softmax(logits - log_d, dim=1)).sum(dim=1)


@dataclass
class LogitAdjusted(_Plain):
    """Logit-adjusted cost-sensitive cross-entropy for a full cost matrix: the "hybrid" loss of
    Narasimhan and Menon, "Training Over-parameterized Models with Non-decomposable Objectives",
    NeurIPS 2021 (arXiv 2107.04641).

    The paper takes a gain matrix G (G(y, z): the reward for predicting z when the truth is y),
    writes G = M D with D = diag(G(1, 1), ..., G(K, K)) > 0, M = G D^-1, and trains

        l_hyb(y, f(x)) = -sum_z M(y, z) log( exp(f_z(x) - log D_zz) / sum_j exp(f_j(x) - log D_jj) ),

    batch mean here; its Proposition 4 shows it calibrated for G when M >= 0: the minimiser's
    argmax_z f_z(x) is argmax_z sum_y p(y | x) G(y, z). (There softmax(f - log d) is proportional
    to p^T M, so f = log(p^T M D) + const = log(p^T G) + const.) Where G is diagonal, M = I and
    this is the logit-adjusted loss -log softmax(f - log d)_y of the paper's diagonal case.

    Costs to gains, our assumption: G(y, z) = a_y - c(y, z). Any per-row offset a_y leaves
    argmax_z sum_y p(y | x) G(y, z) = argmin_z sum_y p(y | x) c(y, z), the cost-optimal decision,
    so the loss stays calibrated for the costs; we take a_y = max_z c(y, z), the least offset
    with G >= 0, and the largest cost for a row of zeros (``hybrid_weights``). Consequences:
    uniform off-diagonal costs give G = a I, M = I, a constant adjustment: plain cross-entropy;
    costs depending on the true class only (c(y, z) = w_y) give G = diag(w): the pure logit
    adjustment f_z - log w_z. The loss does not change when the costs are scaled. Where costs
    are 0, the cost-optimal decision is indifferent between those classes and so is this loss:
    with a single costly pair (y', z'), samples of every other class are trained towards uniform
    scores, and the model only learns to avoid z' where y' is likely.

    Prediction, as in the paper, is argmax_z f_z(x) of the model's plain output: the adjustment
    only enters the loss, so the model needs no extra layer. softmax(f) estimates the normalised
    expected gains p^T G, not p(. | x) (``scores_note``). The paper's loss has no free parameter
    besides G, so this method has no options.
    """

    cost: Tensor
    name: str = field(default="logit_adjusted", init=False)
    weights: Tensor = field(init=False, repr=False)  # M, K x K
    log_d: Tensor = field(init=False, repr=False)  # log D_zz, K

    def __post_init__(self) -> None:
        _check_cost(self.cost, self.name)
        if not (self.cost > 0).any():
            raise MethodError(f"{self.name}: every cost is 0; at least one error must cost something to form gains")
        weights, log_d = hybrid_weights(self.cost.to(torch.float64))
        self.weights, self.log_d = weights.to(self.cost.dtype), log_d.to(self.cost.dtype)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        logits = model(x)
        loss = logit_adjusted_loss(logits, y, self.weights.to(logits.device), self.log_d.to(logits.device)).mean()
        return loss, {"hybrid": loss.detach()}


NORMALIZATIONS = ("unbiased", "attacked_mean")
PAIR_MODES = ("stochastic", "full")  # Algorithm 3 (one drawn pair per batch) or Algorithm 2


@dataclass
class CSADA(_Plain):
    """Objective (5), trained by Algorithm 2 (``pairs="full"``) or Algorithm 3 (``pairs="stochastic"``).

    loss = CE(x, y) + adv_weight * adversarial term, where the adversarial examples come
    from Algorithm 1 and are treated as constants (no gradient flows through the attack).

    Full: every sample i is attacked towards every z with c~(y_i, z) > 0, and the
    adversarial term is (1/|B|) sum_i sum_z c~(y_i, z) CE(x_i + delta_i^z, y_i), the
    mini-batch version of (5). Pairs of zero weight contribute nothing, so they are not
    attacked at all.

    Stochastic: one pair (y_B, z_B) is drawn from c~ per mini-batch and the samples of
    class y_B are attacked towards z_B. ``normalization`` sets how their losses are
    averaged:

    * "unbiased" (default): divide their summed loss by |B|. Its expectation over the
      drawn pair is exactly the full adversarial term above, so the gradient is an
      unbiased estimate of (5)'s. (The formula printed in section 3.3 puts delta = 0 for
      the other samples, which would add adv_weight * CE of clean samples too; we read the
      intent, unbiasedness, and leave them out.)
    * "attacked_mean": the mean over the samples of class y_B only, as the authors'
      public code does. That scales adv_weight by roughly |B| / (number of class-y_B
      samples); the paper's lambda values were tuned with it.

    Samples Algorithm 1 skips (misclassified) enter with delta = 0, as (5) says.
    Clean and adversarial inputs share one forward pass; with BatchNorm in train mode
    their batch statistics are therefore pooled.
    """

    cost: Tensor
    adv_weight: float = 1.0
    temperature: float = 1.0
    eps: float = 1.0
    steps: int = 10
    step_size: float = 0.01
    norm: str = "linf"
    step_rule: str = "gradient"
    clamp: tuple[float, float] | None = None
    pairs: str = "stochastic"
    normalization: str = "unbiased"
    seed: int = 0
    name: str = field(default="csada", init=False)

    def __post_init__(self) -> None:
        if self.pairs not in PAIR_MODES:
            raise MethodError(f"pairs must be one of {', '.join(PAIR_MODES)}; got {self.pairs!r}")
        if self.normalization not in NORMALIZATIONS:
            raise MethodError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {self.normalization!r}")
        if not (math.isfinite(self.adv_weight) and self.adv_weight >= 0):
            raise MethodError(f"adv_weight (lambda) must be a finite number >= 0, got {self.adv_weight!r}")
        if self.norm not in NORMS:
            raise MethodError(f"unknown norm {self.norm!r}; known: {', '.join(sorted(NORMS))}")
        if self.step_rule not in STEP_RULES:
            raise MethodError(f"unknown step_rule {self.step_rule!r}; known: {', '.join(STEP_RULES)}")
        self.weights = pair_weights(self.cost.to(torch.float64), self.temperature).to(torch.float32)
        # The pair sampler has its own generator: seeded identically on every DDP rank, all
        # ranks draw the same pair, so one pair serves the whole global mini-batch.
        self.generator = torch.Generator().manual_seed(self.seed)

    def start_epoch(self, seed: int) -> None:
        """Restart the pair draws from ``seed``: a resumed run draws what an uninterrupted one did."""
        self.generator.manual_seed(seed)

    # -- pieces -----------------------------------------------------------------------------
    def attack(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor):
        return targeted_attack(
            unwrap_model(model), x, y, target,
            eps=self.eps, steps=self.steps, step_size=self.step_size,
            norm=self.norm, clamp=self.clamp, step_rule=self.step_rule,
        )

    def sample_pair(self) -> tuple[int, int]:
        """Draw (y_B, z_B) with probability c~(y_B, z_B) (Algorithm 3, line 6)."""
        flat = torch.multinomial(self.weights.flatten(), 1, generator=self.generator).item()
        k = self.weights.shape[0]
        return flat // k, flat % k

    def _combined(
        self, model: nn.Module, x: Tensor, y: Tensor, rows: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor, Stats]:
        """Clean cross-entropy and per-row adversarial CE from one forward pass."""
        if rows.numel() == 0:
            ce = F.cross_entropy(model(x), y)
            return ce, x.new_zeros(0), {"n_attacked": x.new_tensor(0.0)}
        result = self.attack(model, x[rows], y[rows], targets)
        logits = model(torch.cat([x, result.x_adv]))
        ce = F.cross_entropy(logits[: len(x)], y)
        adv_ce = F.cross_entropy(logits[len(x):], y[rows], reduction="none")
        outcome = result.outcome
        stats = {
            "n_attacked": x.new_tensor(float(len(rows))),
            "n_succeeded": (outcome == AttackOutcome.SUCCEEDED).sum().to(x.dtype),
            "n_rejected": (outcome == AttackOutcome.REJECTED).sum().to(x.dtype),
            "n_skipped": (outcome == AttackOutcome.SKIPPED).sum().to(x.dtype),
        }
        return ce, adv_ce, stats

    # -- objectives -------------------------------------------------------------------------
    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        if self.pairs == "full":
            return self.full_loss(model, x, y)
        return self.stochastic_loss(model, x, y, self.sample_pair())

    def full_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        """Algorithm 2's objective on a batch: all (i, z) with c~(y_i, z) > 0 in one attack."""
        weights = self.weights.to(x.device)[y]
        rows, targets = (weights > 0).nonzero(as_tuple=True)
        ce, adv_ce, stats = self._combined(model, x, y, rows, targets)
        adv_term = (weights[rows, targets] * adv_ce).sum() / len(x)
        loss = ce + self.adv_weight * adv_term
        return loss, {"ce": ce.detach(), "adv": adv_term.detach(), **stats}

    def stochastic_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, pair: tuple[int, int]
    ) -> tuple[Tensor, Stats]:
        """Algorithm 3's objective for a given pair (y_B, z_B)."""
        true_class, target_class = pair
        rows = (y == true_class).nonzero(as_tuple=True)[0]
        targets = torch.full_like(rows, target_class)
        ce, adv_ce, stats = self._combined(model, x, y, rows, targets)
        if self.normalization == "unbiased":
            adv_term = adv_ce.sum() / len(x)
        else:
            adv_term = adv_ce.mean() if adv_ce.numel() else adv_ce.sum()
        loss = ce + self.adv_weight * adv_term
        return loss, {"ce": ce.detach(), "adv": adv_term.detach(), **stats}


# Options that come from the run (the MethodContext), never from params.yaml.
_CONTEXT_FIELDS = frozenset({"cost", "clamp", "seed", "name"})


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class and how the run's context fills the class's fields."""

    cls: type
    needs_cost: bool = True
    # What a report should say when the model's scores are not calibrated logits.
    scores_note: str | None = None

    def options(self) -> tuple[str, ...]:
        """The method's own options (params.yaml's ``finetune.<method>`` keys besides optimisation)."""
        return tuple(f.name for f in fields(self.cls) if f.init and f.name not in _CONTEXT_FIELDS)

    def build(self, context: MethodContext, options: Mapping[str, Any]) -> TrainingMethod:
        given = {f.name for f in fields(self.cls) if f.init}
        provided = {"cost": context.cost, "clamp": context.input_bounds, "seed": context.seed}
        return self.cls(**{k: v for k, v in provided.items() if k in given}, **options)


METHODS: dict[str, MethodSpec] = {
    "erm": MethodSpec(ERM, needs_cost=False),
    "csada": MethodSpec(CSADA),
    "ap": MethodSpec(AdjustedPenalty),
    "sosr": MethodSpec(SOSR, scores_note="SOSR's scores are negated regressed costs, not log-probabilities, so "
                                         "the softmax behind this rule is only a heuristic for SOSR."),
    "penalty": MethodSpec(Penalty),
    "soft_labels": MethodSpec(SoftLabels, scores_note="soft_labels trains its softmax towards a cost-smoothed "
                                                      "posterior (the soft targets averaged over p(y | x)), so this "
                                                      "rule applies the costs a second time: a heuristic for it."),
    "logit_adjusted": MethodSpec(LogitAdjusted, scores_note="logit_adjusted's softmax estimates normalised expected "
                                                            "gains, not class probabilities; its argmax already is the "
                                                            "cost-optimal decision, so this rule is only a heuristic "
                                                            "for it."),
}
def learning_rate_key(method: str) -> str:
    """Where params.yaml sets a method's learning rate (for messages): ERM is the baseline's."""
    return f"finetune.{method}.lr" if METHODS[method].needs_cost else "baseline.lr"


# The fine-tuning methods a user can pick (ERM is the baseline).
FINETUNE_METHODS: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.needs_cost)


def build_method(name: str, options: Mapping[str, Any] | None = None,
                 context: MethodContext = MethodContext()) -> TrainingMethod:
    """A training method by name; unknown names and options fail with the valid ones listed."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    spec = METHODS[name]
    if spec.needs_cost and context.cost is None:
        raise MethodError(f"method {name!r} needs a cost matrix (MethodContext.cost)")
    unknown = sorted(set(options or {}) - set(spec.options()))
    if unknown:
        raise MethodError(f"invalid options {unknown} for method {name!r}; valid: "
                         f"{', '.join(spec.options()) or 'none'}")
    return spec.build(context, dict(options or {}))
