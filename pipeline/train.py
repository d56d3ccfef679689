"""The plain training loop shared by every method: ordinary PyTorch, no Ray.

``train_epoch`` runs one pass of a method's loss over batches; ``predict_logits``
collects a model's outputs. Both take any iterable of (x, y) batches, so a DataLoader,
Ray Train's prepared loader or an in-memory ``TensorBatches`` all work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from pipeline.methods import TrainingMethod


class TensorBatches:
    """Mini-batches over in-memory tensors, reshuffled each pass by a seeded generator.

    Slicing whole batches out of one tensor avoids the per-sample collation of a DataLoader,
    which dominates the cost on tiny models such as the toy MLP.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else torch.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.x[index], self.y[index]


def train_epoch(
    model: nn.Module,
    method: TrainingMethod,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """One optimisation pass: the sample-weighted mean of the loss and of each mean stat,
    and the sum of each count stat (keys starting with ``n_``)."""
    model.train()
    totals: dict[str, Tensor] = {}
    seen = 0
    for x, y in batches:
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss, stats = method.loss(model, x, y)
        loss.backward()
        optimizer.step()
        n = len(y)
        seen += n
        for key, value in {"loss": loss.detach(), **stats}.items():
            weight = 1 if key.startswith("n_") else n
            totals[key] = totals.get(key, 0) + value.to(torch.float64) * weight
    if seen == 0:
        raise ValueError("train_epoch got no batches")
    return {key: float(value) if key.startswith("n_") else float(value) / seen for key, value in totals.items()}


@torch.no_grad()
def predict_logits(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Model outputs and labels for every batch, in order, in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        for x, y in batches:
            if device is not None:
                x = x.to(device, non_blocking=True)
            outputs.append(model(x).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs), torch.cat(labels)
