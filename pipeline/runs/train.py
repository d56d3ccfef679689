"""Training: the plain loop every method shares, and ``train_func``, one run start to end.

``train_epoch`` runs one pass of a method's loss over batches; ``predict_logits`` collects a
model's outputs. Both take any iterable of (x, y) batches (a DataLoader, Ray Train's prepared
loader, an in-memory ``TensorBatches``).

``train_func(config)`` trains one :class:`~pipeline.runs.jobs.TrainJob`. It is ordinary PyTorch: the
host (a Ray Tune trial, a Ray Train worker, or a plain process) appears only behind a
:class:`~pipeline.runs.sessions.Session`, and checkpoints go to the run's
:class:`~pipeline.runs.checkpoints.RunStore`. Every epoch ends with a validation pass; the state
(model, optimisers, scheduler, epoch, history and the best epoch's weights) is checkpointed at
most every ``checkpoint_interval_s`` seconds and after the last epoch, so a killed run resumes
from its last checkpoint, losing at most one interval. Every random stream restarts from
(seed, epoch) at each epoch, so a resumed run trains exactly what an uninterrupted one does. The
finished run writes its outcome (the selected epoch's weights and the history) to the store.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline.datasets import ArrayDataset
from pipeline.datasets.prepare import load_prepared
from pipeline.errors import UserError
from pipeline.method.costfiles import load_costs
from pipeline.method.losses import MethodContext, TrainingMethod
from pipeline.method.registry import build_method, learning_rate_key
from pipeline.models.networks import classifier_head, freeze_all_but_head, unfreeze_all, unwrap_model
from pipeline.models.registry import build_model
from pipeline.runs.checkpoints import MODEL_FILE, RunStore, load_checkpoint, load_model_state
from pipeline.runs.jobs import TrainJob
from pipeline.runs.optim import OptimConfig, make_optimizer
from pipeline.runs.sessions import Session, open_session


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


def validation_metrics(logits: Tensor, labels: Tensor, cost: Tensor | None, prefix: str = "val") -> dict[str, float]:
    """Loss (cross-entropy of the outputs), accuracy and, given costs, WER under argmax (the mean
    of c(true, predicted), row = true class) of one split, as ``<prefix>_loss`` etc."""
    predictions = logits.argmax(1)
    metrics = {
        f"{prefix}_loss": float(F.cross_entropy(logits, labels)),
        f"{prefix}_accuracy": float((predictions == labels).float().mean()),
    }
    if cost is not None:
        metrics[f"{prefix}_wer"] = float(cost[labels, predictions].mean())
    return metrics


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a run trains with, built once; the rest of ``train_func`` only reads it."""

    job: TrainJob
    optim: OptimConfig
    session: Session
    model: nn.Module  # as the session prepared it (DDP-wrapped on several workers)
    method: TrainingMethod
    cost: Tensor | None
    train_loader: DataLoader
    val_loader: DataLoader
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    head_optimizer: torch.optim.Optimizer
    scheduler: Any
    # Scored after every epoch besides validation: the training split (for a run that stops once
    # it fits it) and the test split (for a job with track_test), each in eval mode, in order.
    extra_loaders: dict[str, DataLoader] = field(default_factory=dict)

    @property
    def plain(self) -> nn.Module:
        return unwrap_model(self.model)

    @property
    def total_epochs(self) -> int:
        return self.optim.head_only_epochs + self.optim.epochs


@dataclass
class Progress:
    """Where a run stands: the next epoch, every finished epoch's metrics, the best so far."""

    start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    resumes: int = 0

    def record(self, metrics: dict[str, float], model_state: dict[str, Tensor], select_metric: str) -> None:
        """Append an epoch; it becomes the best when its ``select_metric`` is strictly lower
        (ties keep the earlier epoch), or always when ``select_metric`` is "last"."""
        self.history.append(metrics)
        if select_metric == "last":
            self.best = {"epoch": int(metrics["epoch"]), "metric": float(metrics["epoch"]),
                         "model": {k: v.detach().clone() for k, v in model_state.items()}}
        elif self.best is None or metrics[select_metric] < self.best["metric"]:
            # The selected weights travel inside every checkpoint, so the latest checkpoint is all
            # that resuming and the final answer need.
            self.best = {"epoch": int(metrics["epoch"]), "metric": metrics[select_metric],
                         "model": {k: v.detach().clone() for k, v in model_state.items()}}


def loader_options(dataset: Any, cpus: float, device: torch.device) -> dict[str, Any]:
    """DataLoader options from the worker's share of the machine: the CPUs besides the one that
    trains decode and augment images in worker processes, and batches for a GPU are pinned.
    In-memory tensors (toy, digits, tables) need no workers."""
    workers = 0 if isinstance(dataset, ArrayDataset) else max(0, int(cpus) - 1)
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device.type == "cuda"}


def build_run(job: TrainJob, root: Path, session: Session, cpus: float = 1.0) -> Run:
    optim = OptimConfig(**job.optim)
    # The global seed first: model initialisation and dropout draw from it.
    torch.manual_seed(job.seed)
    generator = torch.Generator().manual_seed(job.seed)
    data = load_prepared(job.dataset, job.path(root, "raw_dir"), job.path(root, "manifest"),
                         augment=optim.augment, label_column=job.label_column)
    cost = None
    if job.cost_csv is not None:
        cost_matrix = load_costs(job.path(root, "cost_csv"))
        cost_matrix.check_classes(data.classes)
        cost = cost_matrix.as_tensor()
    model = build_model(job.model, num_classes=data.num_classes, input_shape=data.input_shape,
                        pretrained=job.pretrained and job.init_checkpoint is None, **job.model_options)
    context = MethodContext(cost=cost, input_bounds=data.input_bounds(), seed=job.seed)
    method = build_method(job.method, job.method_options, context)
    if job.init_checkpoint:
        init = job.path(root, "init_checkpoint")
        load_model_state(model, load_checkpoint(init), job.init_checkpoint)
    if method.needs_start_predictions:  # what the starting model gets wrong, before any training
        method.start_training(*predict_logits(model, DataLoader(data.split("val"), batch_size=256, shuffle=False)))
    model = method.prepare_model(model)
    head = classifier_head(model)
    loading = loader_options(data.split("train"), cpus, session.device)
    train_loader = session.prepare_loader(DataLoader(
        data.split("train"), batch_size=optim.batch_size, shuffle=True, generator=generator, drop_last=False,
        **loading,
    ))
    # Every rank validates on the whole validation split: no sharding, identical numbers on all ranks.
    val_loader = DataLoader(data.split("val"), batch_size=max(optim.batch_size, 256), shuffle=False, **loading)
    extra_loaders = {prefix: DataLoader(data.split(split), batch_size=max(optim.batch_size, 256), shuffle=False,
                                        **loading)
                     for prefix, split, wanted in (("fit", "train", optim.stops_early), ("test", "test", job.track_test))
                     if wanted}
    model = session.prepare_model(model)
    optimizer = make_optimizer(model.parameters(), optim)
    return Run(job=job, optim=optim, session=session, model=model, method=method, cost=cost,
               train_loader=train_loader, val_loader=val_loader, generator=generator,
               optimizer=optimizer, head_optimizer=make_optimizer(head.parameters(), optim, lr=optim.head_only_lr),
               scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.lr_step_epochs,
                                                         gamma=optim.lr_gamma),
               extra_loaders=extra_loaders)


def restore(run: Run, state: dict[str, Any] | None) -> Progress:
    """The progress of a run starting fresh (``state`` None) or from its latest checkpoint."""
    if state is None:
        return Progress()
    load_model_state(run.plain, state, "the run's checkpoint")
    run.optimizer.load_state_dict(state["optimizer"])
    run.head_optimizer.load_state_dict(state["head_optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    progress = Progress(start=int(state["epoch"]) + 1, history=list(state["history"]), best=state["best"],
                        # recorded per epoch: shows which epochs ran after a restart
                        resumes=int(state["resumes"]) + 1)
    if run.session.rank == 0:
        print(f"[{run.job.name}] resuming after epoch {progress.start} of {run.total_epochs}", flush=True)
    return progress


@contextlib.contextmanager
def _phase(model: nn.Module, head_only: bool) -> Iterator[None]:
    """Section 5.3.3's first phase trains only the new head; the rest of the model is frozen."""
    if head_only:
        freeze_all_but_head(model)
    try:
        yield
    finally:
        if head_only:
            unfreeze_all(model)


def run_epoch(run: Run, epoch: int, resumes: int) -> dict[str, float]:
    """Train one epoch and validate; the epoch's metrics."""
    head_only = epoch < run.optim.head_only_epochs
    sampler = getattr(run.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    # Every random stream restarts from (seed, epoch): data order, augmentation, dropout and the
    # method's own draws are the same whether or not the run was interrupted and resumed.
    epoch_seed = run.job.seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)
    run.generator.manual_seed(epoch_seed)
    run.method.start_epoch(epoch_seed)
    with _phase(run.plain, head_only):
        stats = train_epoch(run.model, run.method, run.train_loader,
                            run.head_optimizer if head_only else run.optimizer, device=run.session.device)
    if not head_only:
        run.scheduler.step()
    logits, labels = predict_logits(run.plain, run.val_loader, device=run.session.device)
    metrics = {"epoch": epoch, "resumes": resumes, **{f"train_{k}": v for k, v in stats.items()},
               **validation_metrics(logits, labels, run.cost)}
    for prefix, loader in run.extra_loaders.items():
        metrics.update(validation_metrics(*predict_logits(run.plain, loader, device=run.session.device), run.cost,
                                          prefix=prefix))
    check_diverged(run.job, metrics)
    return metrics


class DivergedError(UserError):
    """A run whose loss became non-finite or exploded: its weights are useless, training stops."""


# A validation cross-entropy above this many nats is a diverged run, never a poor one: chance is
# ln K (2.3 for 10 classes), and even a badly overfitted model stays within a few times that.
DIVERGED_VAL_LOSS = 100.0


def check_diverged(job: TrainJob, metrics: dict[str, float]) -> None:
    """Raise :class:`DivergedError` when an epoch's metrics are non-finite or its validation loss
    exceeds :data:`DIVERGED_VAL_LOSS`."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    loss = metrics.get("val_loss", 0.0)
    if bad or loss > DIVERGED_VAL_LOSS:
        what = f"{', '.join(bad)} not finite" if bad else f"validation loss {loss:.3g} > {DIVERGED_VAL_LOSS:g}"
        raise DivergedError(f"run {job.name} diverged at epoch {int(metrics['epoch']) + 1} ({what}) with "
                            f"{job.optim.get('optimizer')} lr {job.optim.get('lr'):g}; lower the learning rate ({learning_rate_key(job.method)})")


def checkpoint_state(run: Run, progress: Progress) -> dict[str, Any]:
    return {
        "model": run.plain.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "head_optimizer": run.head_optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": progress.history[-1]["epoch"],
        "history": progress.history,
        "best": progress.best,
        "resumes": progress.resumes,
        "job": run.job.to_dict(),
    }


def train_func(config: dict[str, Any], session: Session | None = None) -> None:
    """Train one job to the end.

    ``config``: ``job`` (``TrainJob.to_dict()``), ``store`` (the run's folder: local path or
    URI), ``root`` (the project root the job's paths are relative to; default "."), ``session``
    (``local``, ``tune`` or ``train``; default ``local``), ``checkpoint_interval_s`` (default 0:
    every epoch) and ``device`` (local and tune sessions; default: CUDA when available). A test
    may pass its own ``session``.
    """
    job = TrainJob.from_dict(config["job"])
    session = session or open_session(config.get("session", "local"), config.get("device"))
    store = RunStore(config["store"])
    run = build_run(job, Path(config.get("root", ".")), session, cpus=float(config.get("cpus", 1)))
    progress = restore(run, store.load_state())
    interval = float(config.get("checkpoint_interval_s", 0))
    saved = time.monotonic()
    for epoch in range(progress.start, run.total_epochs):
        if progress.history and run.optim.fit_reached(progress.history[-1]):
            break  # resumed after the epoch that met the stopping criterion
        metrics = run_epoch(run, epoch, progress.resumes)
        progress.record(metrics, run.plain.state_dict(), job.select_metric)
        if session.rank == 0:
            shown = " ".join(f"{k} {metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_accuracy", "val_wer")
                             if k in metrics)
            print(f"[{job.name}] epoch {epoch + 1}/{run.total_epochs} {shown}", flush=True)
            last = epoch == run.total_epochs - 1 or run.optim.fit_reached(metrics)
            if last or time.monotonic() - saved >= interval:
                store.save_state(checkpoint_state(run, progress))
                saved = time.monotonic()
        session.report(metrics)
    if session.rank == 0 and progress.best is not None:
        store.write_outcome(progress.best["model"], {"job": job.to_dict(), "best_epoch": progress.best["epoch"],
                                                     "history": progress.history})


def trained_model(directory: Path, data: Any, cost: Tensor | None) -> nn.Module:
    """The selected model of a finished run's outcome folder (``model.pt``), rebuilt from the job
    it records, for ``data`` (a ClassificationData) and the run's ``cost`` matrix."""
    path = directory / MODEL_FILE
    state = load_checkpoint(path)
    job = TrainJob.from_dict(state["job"])
    model = build_model(job.model, num_classes=data.num_classes, input_shape=data.input_shape, **job.model_options)
    model = build_method(job.method, job.method_options, MethodContext(cost=cost)).prepare_model(model)  # SOSR's head
    load_model_state(model, state, path)
    return model
