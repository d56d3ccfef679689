"""Where ``train_func`` runs: the small interface between the training loop and its host.

A session says which rank this process is, which device to use, how to wrap the model and the
loader for DDP, and where per-epoch metrics go. Three hosts, picked by name in the run's config:

* ``local``: one process, no Ray (tests, debugging; metrics kept in ``reports``);
* ``tune``: a Ray Tune trial running one worker itself: no DDP, metrics to ``ray.tune.report``;
* ``train``: a Ray Train worker of a ``TorchTrainer`` (DDP over several workers).

Checkpoints are not the session's business: the run's :class:`~pipeline.runs.checkpoints.RunStore`
holds them, whichever host trains.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...

    def report(self, metrics: dict[str, float]) -> None: ...


class LocalSession:
    """One process without Ray; the metrics of every epoch are kept in ``reports``."""

    rank, world_size = 0, 1

    def __init__(self, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.reports: list[dict[str, float]] = []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def report(self, metrics: dict[str, float]) -> None:
        self.reports.append(metrics)


class TuneSession(LocalSession):
    """A Ray Tune trial that trains its one worker itself (no TorchTrainer, no DDP)."""

    def report(self, metrics: dict[str, float]) -> None:
        import ray.tune

        super().report(metrics)
        ray.tune.report(metrics)


class TrainSession:
    """A Ray Train worker: DDP through ``ray.train.torch``, metrics through ``ray.train.report``."""

    def __init__(self, device: str | None = None) -> None:
        import ray.train
        import ray.train.torch

        del device  # Ray Train assigns each worker its device
        self._train, self._torch = ray.train, ray.train.torch
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return self._torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return self._torch.prepare_data_loader(loader)

    def report(self, metrics: dict[str, float]) -> None:
        self._train.report(metrics)  # every rank: it is a barrier


SESSIONS: dict[str, type] = {"local": LocalSession, "tune": TuneSession, "train": TrainSession}


def open_session(name: str, device: str | None = None) -> Session:
    if name not in SESSIONS:
        raise ValueError(f"unknown session {name!r}; known: {', '.join(SESSIONS)}")
    return SESSIONS[name](device)
