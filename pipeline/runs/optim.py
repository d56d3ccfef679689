"""One training run's optimisation settings, and the optimisers they name.

Section 5 trains with SGD (momentum, weight decay, a step schedule) or Adam; section 5.3.3 first
trains only a new classifier head for a few epochs. :class:`OptimConfig` holds those settings as
they come from params.yaml; :data:`OPTIMIZERS` is the registry of optimiser names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimConfig:
    """Epochs, optimiser and step schedule of one run (section 5)."""

    epochs: int
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_epochs: int = 1_000_000  # decay lr by lr_gamma every this many epochs
    lr_gamma: float = 1.0
    batch_size: int = 64
    head_only_epochs: int = 0  # section 5.3.3: first train only the new head ...
    head_only_lr: float = 1e-4  # ... at this learning rate
    augment: bool = False
    # Stop before ``epochs`` once the model fits its training split (section 1.1's two baselines):
    # after the first epoch whose training accuracy reaches stop_train_accuracy, or whose training
    # loss falls below stop_train_loss, both measured on the whole split in eval mode (0: off).
    stop_train_accuracy: float = 0.0
    stop_train_loss: float = 0.0

    @property
    def stops_early(self) -> bool:
        return self.stop_train_accuracy > 0 or self.stop_train_loss > 0

    def fit_reached(self, metrics: dict[str, float]) -> bool:
        """Whether an epoch's ``fit_accuracy`` / ``fit_loss`` meet a stopping criterion."""
        if self.stop_train_accuracy > 0 and metrics.get("fit_accuracy", 0.0) >= self.stop_train_accuracy:
            return True
        return self.stop_train_loss > 0 and metrics.get("fit_loss", math.inf) < self.stop_train_loss


OPTIMIZERS: dict[str, Callable[[Iterable[torch.nn.Parameter], OptimConfig, float], torch.optim.Optimizer]] = {
    "sgd": lambda parameters, optim, lr: torch.optim.SGD(
        parameters, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay),
    "adam": lambda parameters, optim, lr: torch.optim.Adam(parameters, lr=lr, weight_decay=optim.weight_decay),
}


def make_optimizer(parameters: Iterable[torch.nn.Parameter], optim: OptimConfig,
                   lr: float | None = None) -> torch.optim.Optimizer:
    """The optimiser ``optim.optimizer`` over ``parameters`` at ``lr`` (default ``optim.lr``)."""
    if optim.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optim.optimizer!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    rate = optim.lr if lr is None else lr
    if not rate > 0:
        # A zero rate would hand back the starting model as if it had been trained.
        raise ValueError(f"learning rate must be > 0, got {rate!r}")
    return OPTIMIZERS[optim.optimizer](parameters, optim, rate)
