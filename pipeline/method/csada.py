"""CSADA: cost-sensitive adversarial data augmentation (objective (5), Algorithms 2 and 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.method.attacks import NORMS, STEP_RULES, AttackOutcome, targeted_attack
from pipeline.method.costs import pair_weights, smoothed_error_rates
from pipeline.method.losses import MethodError, Stats, _Plain
from pipeline.models.networks import unwrap_model

NORMALIZATIONS = ("unbiased", "attacked_mean")
PAIR_MODES = ("stochastic", "full")  # Algorithm 3 (one drawn pair per batch) or Algorithm 2
BN_MODES = ("train", "frozen")
PASSES = ("joint", "separate")
PAIR_WEIGHTINGS = ("cost", "errors")


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

    How the model runs (the paper does not say; the authors' code decides, and so do these):

    * ``passes``: "joint" (default) puts clean and adversarial inputs through one forward pass,
      so BatchNorm in train mode pools their batch statistics; "separate" runs them one after
      the other, as the authors' code does.
    * ``bn``: "train" (default) leaves the model in train mode; "frozen" switches it to eval
      mode at the first attack of each epoch and leaves it there until the next epoch, as the
      authors' code does (its attack calls ``model.eval()`` and nothing calls ``model.train()``
      again): from then on BatchNorm uses, and no longer updates, its running statistics, and
      dropout is off. Implies separate passes.
    * ``input_clip``: keep attacked inputs inside the data's valid range (default); the authors'
      code clips only to the eps-ball.
    * ``pair_weights`` (beyond the paper): "cost" draws pairs from c~ (objective (5)); "errors"
      weighs each pair also by the starting model's smoothed validation error rate, c^tau * r
      (:func:`pipeline.method.costs.pair_weights`), so augmentation goes where costly errors
      actually happen.
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
    bn: str = "train"
    passes: str = "joint"
    input_clip: bool = True
    pair_weights: str = "cost"
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
        for key, value, valid in (("bn", self.bn, BN_MODES), ("passes", self.passes, PASSES),
                                  ("pair_weights", self.pair_weights, PAIR_WEIGHTINGS)):
            if value not in valid:
                raise MethodError(f"{key} must be one of {', '.join(valid)}; got {value!r}")
        if self.bn == "frozen" and self.passes == "joint":
            raise MethodError("bn 'frozen' runs clean and adversarial inputs in separate passes; set passes: separate")
        if not isinstance(self.input_clip, bool):
            raise MethodError(f"input_clip must be true or false, got {self.input_clip!r}")
        self.weights = pair_weights(self.cost.to(torch.float64), self.temperature).to(torch.float32)
        # The pair sampler has its own generator: seeded identically on every DDP rank, all
        # ranks draw the same pair, so one pair serves the whole global mini-batch.
        self.generator = torch.Generator().manual_seed(self.seed)

    def start_epoch(self, seed: int) -> None:
        """Restart the pair draws from ``seed``: a resumed run draws what an uninterrupted one did."""
        self.generator.manual_seed(seed)

    @property
    def needs_start_predictions(self) -> bool:  # type: ignore[override]
        return self.pair_weights == "errors"

    def start_training(self, val_logits: Tensor, val_labels: Tensor) -> None:
        """Error-aware pair weights from the starting model's validation predictions (the same
        on every rank and after a resume: the run computes them from its starting checkpoint)."""
        if self.pair_weights == "errors":
            rates = smoothed_error_rates(val_logits.argmax(1), val_labels, self.cost.shape[0])
            self.weights = pair_weights(self.cost.to(torch.float64), self.temperature, rates).to(torch.float32)

    # -- pieces -----------------------------------------------------------------------------
    def attack(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor):
        return targeted_attack(
            unwrap_model(model), x, y, target,
            eps=self.eps, steps=self.steps, step_size=self.step_size,
            norm=self.norm, clamp=self.clamp if self.input_clip else None, step_rule=self.step_rule,
        )

    def sample_pair(self) -> tuple[int, int]:
        """Draw (y_B, z_B) with probability c~(y_B, z_B) (Algorithm 3, line 6)."""
        flat = torch.multinomial(self.weights.flatten(), 1, generator=self.generator).item()
        k = self.weights.shape[0]
        return flat // k, flat % k

    def _combined(
        self, model: nn.Module, x: Tensor, y: Tensor, rows: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor, Stats]:
        """Clean cross-entropy and per-row adversarial CE, from one forward pass or two (class doc)."""
        if rows.numel() == 0:
            ce = F.cross_entropy(model(x), y)
            return ce, x.new_zeros(0), {"n_attacked": x.new_tensor(0.0)}
        if self.passes == "joint":
            result = self.attack(model, x[rows], y[rows], targets)
            logits = model(torch.cat([x, result.x_adv]))
            clean_logits, adv_logits = logits[: len(x)], logits[len(x):]
        else:
            clean_logits = model(x)  # in the mode the epoch left the model: train until the first attack
            if self.bn == "frozen":
                model.eval()  # until train_epoch sets train mode at the next epoch (class doc)
            result = self.attack(model, x[rows], y[rows], targets)
            adv_logits = model(result.x_adv)
        ce = F.cross_entropy(clean_logits, y)
        adv_ce = F.cross_entropy(adv_logits, y[rows], reduction="none")
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
