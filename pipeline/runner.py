"""One training run, start to end: ``train_func(config)``.

This is what each Ray Train worker executes, and it is ordinary PyTorch: Ray appears only
behind the small ``Session`` interface (rank, device, DDP wrapping, reporting a checkpoint,
finding the one to resume from). ``LocalSession`` implements it without Ray, so tests and
debugging can call ``train_func`` directly.

Every epoch ends with a validation pass and a checkpoint holding the model, optimiser and
scheduler state, the epoch and the per-epoch history, so a killed run resumes from its last
finished epoch instead of starting over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import Config, OptimConfig
from pipeline.costs import CostMatrix
from pipeline.fileio import atomic_write_bytes
from pipeline.methods import build_method
from pipeline.models import build_model, classifier_head, freeze_all_but_head, unfreeze_all
from pipeline.train import predict_logits, train_epoch

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs, as plain values (it travels to Ray workers as JSON)."""

    name: str
    dataset: str
    raw_dir: str
    manifest: str
    cost_csv: str | None  # None for the baseline: ERM needs no costs, so a new cost matrix does not retrain it
    model: str
    model_options: dict[str, Any]
    pretrained: bool
    method: str  # "erm" for the baseline
    method_options: dict[str, Any]
    optim: dict[str, Any]
    seed: int
    select_metric: str  # "val_loss" (baseline) or "val_wer" (fine-tuning)
    init_checkpoint: str | None = None
    label_column: str = "label"
    replication: int | None = None
    inputs_digest: str = ""  # content hash of the files above: a changed input is a different job

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainJob:
        return cls(**values)

    def fingerprint(self) -> str:
        """Short hash of the job and the library's code: a run is resumed or reused only by an
        identical job run by identical code."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str) + code_digest()
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def code_digest() -> str:
    """sha256 over the source of the ``pipeline`` package."""
    package = Path(__file__).parent
    return digest_files(sorted(package.rglob("*.py")), names=lambda path: str(path.relative_to(package)))


def digest_files(paths: list[Path | None], names=lambda path: path.name) -> str:
    """sha256 over the contents of the given files (a missing file counts as its path)."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        digest.update(names(path).encode())
        if path.is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def baseline_job(config: Config) -> TrainJob:
    return TrainJob(
        name=f"{config.dataset}-baseline",
        dataset=config.dataset,
        raw_dir=str(config.paths.raw.resolve()),
        manifest=str(config.paths.manifest.resolve()),
        cost_csv=None,
        model=config.model,
        model_options=dict(config.model_options),
        pretrained=config.pretrained,
        method="erm",
        method_options={},
        optim=dataclasses.asdict(config.baseline),
        seed=config.seed,
        select_metric="val_loss",
        label_column=config.data.label_column,
        # FETCHED.json carries the raw files' checksums, so it stands for the whole raw folder.
        inputs_digest=digest_files([config.paths.raw / "FETCHED.json", config.paths.manifest]),
    )


def finetune_jobs(config: Config, init_checkpoint: Path) -> list[TrainJob]:
    """One job per method and replication. The input files (the baseline checkpoint may be a
    large ResNet) are hashed once for the whole sweep, not once per job."""
    base = dataclasses.replace(
        baseline_job(config),
        cost_csv=str(config.paths.cost.resolve()),
        select_metric="val_wer",
        init_checkpoint=str(init_checkpoint.resolve()),
        inputs_digest=digest_files(
            [config.paths.raw / "FETCHED.json", config.paths.manifest, config.paths.cost, init_checkpoint]
        ),
    )
    # Replications differ in their seed: data order, pair draws and augmentation.
    return [
        dataclasses.replace(
            base,
            name=f"{config.dataset}-{method.name}-r{replication}",
            method=method.name,
            method_options=dict(method.options),
            optim=dataclasses.asdict(method.optim),
            seed=config.seed * 1000 + replication,
            replication=replication,
        )
        for method in config.methods
        for replication in range(config.replications)
    ]


# -- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint as a dict of tensors and plain values (``weights_only``: never code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupt, or not a torch file at all
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no model state dict")
    return state


def load_model_state(model: nn.Module, state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit model {type(model).__name__}: {first}") from None


# -- sessions ------------------------------------------------------------------------------


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None: ...

    def resume_state(self) -> dict[str, Any] | None: ...


class LocalSession:
    """One process, no Ray: checkpoints go to ``run_dir/epoch_NNNN/checkpoint.pt``."""

    rank, world_size = 0, 1

    def __init__(self, run_dir: str | os.PathLike[str], device: str | None = None):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.reports: list[dict[str, float]] = []

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        save_checkpoint(state, self.run_dir / f"epoch_{metrics['epoch']:04d}" / CHECKPOINT_FILE)
        self.reports.append(metrics)

    def resume_state(self) -> dict[str, Any] | None:
        finished = sorted(self.run_dir.glob(f"epoch_*/{CHECKPOINT_FILE}"))
        return load_checkpoint(finished[-1]) if finished else None


class RaySession:
    """Inside a Ray Train worker: DDP through Ray, checkpoints through ``ray.train.report``."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        self._train = ray.train
        self._torch = ray.train.torch
        # Ray logs a line per report and per checkpoint; our own per-epoch line says enough.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return self._torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return self._torch.prepare_data_loader(loader)

    def report(self, metrics: dict[str, float], state: dict[str, Any]) -> None:
        # Every rank must call report (it is a barrier); only rank 0 writes the checkpoint.
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if self.rank == 0:
                save_checkpoint(state, Path(directory) / CHECKPOINT_FILE)
                checkpoint = self._train.Checkpoint.from_directory(directory)
            self._train.report(metrics, checkpoint=checkpoint)

    def resume_state(self) -> dict[str, Any] | None:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_checkpoint(Path(directory) / CHECKPOINT_FILE)


def in_ray_worker() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
        return True
    except Exception:
        return False


# -- the run ---------------------------------------------------------------------------------


def make_optimizer(parameters, optim: OptimConfig, lr: float | None = None) -> torch.optim.Optimizer:
    lr = optim.lr if lr is None else lr
    if optim.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=optim.weight_decay)


def validation_metrics(logits: torch.Tensor, labels: torch.Tensor, cost: torch.Tensor | None) -> dict[str, float]:
    """Validation loss (cross-entropy of the outputs), accuracy and, given costs, WER under argmax."""
    predictions = logits.argmax(1)
    metrics = {
        "val_loss": float(F.cross_entropy(logits, labels)),
        "val_accuracy": float((predictions == labels).float().mean()),
    }
    if cost is not None:
        metrics["val_wer"] = float(cost[labels, predictions].mean())
    return metrics


def _seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def train_func(config: dict[str, Any]) -> None:
    """Train one job; ``config = {"job": TrainJob.to_dict(), "run_dir": local dir when run without Ray}``."""
    from pipeline.prepare import load_prepared

    job = TrainJob.from_dict(config["job"])
    optim = OptimConfig(**job.optim)
    session: Session = RaySession() if in_ray_worker() else LocalSession(config["run_dir"], config.get("device"))
    generator = _seed_everything(job.seed)

    data = load_prepared(job.dataset, Path(job.raw_dir), Path(job.manifest), augment=optim.augment,
                         label_column=job.label_column)
    cost = None
    if job.cost_csv is not None:
        cost_matrix = CostMatrix.from_csv(job.cost_csv)
        cost_matrix.check_classes(data.classes)
        cost = cost_matrix.as_tensor()

    model = build_model(job.model, num_classes=data.num_classes, input_shape=data.input_shape,
                        pretrained=job.pretrained and job.init_checkpoint is None, **job.model_options)
    options = dict(job.method_options)
    if job.method == "csada":
        bounds = data.input_bounds()
        options.setdefault("clamp", bounds)
        options.setdefault("seed", job.seed)  # same on every rank: one pair per global mini-batch
    method = build_method(job.method, cost, options)
    if job.init_checkpoint:
        load_model_state(model, load_checkpoint(job.init_checkpoint), job.init_checkpoint)
    model = method.prepare_model(model)
    head = classifier_head(model)

    train_loader = session.prepare_loader(DataLoader(
        data.split("train"), batch_size=optim.batch_size, shuffle=True, generator=generator, drop_last=False,
    ))
    # Every rank validates on the whole validation split: no sharding, identical numbers on all ranks.
    val_loader = DataLoader(data.split("val"), batch_size=max(optim.batch_size, 256), shuffle=False)
    model = session.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model

    total_epochs = optim.head_only_epochs + optim.epochs
    head_optimizer = make_optimizer(head.parameters(), optim, lr=optim.head_only_lr)
    optimizer = make_optimizer(model.parameters(), optim)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.lr_step_epochs, gamma=optim.lr_gamma)

    start, history, best, resumes = 0, [], None, 0
    resumed = session.resume_state()
    if resumed is not None:
        load_model_state(plain, resumed, "resume checkpoint")
        optimizer.load_state_dict(resumed["optimizer"])
        head_optimizer.load_state_dict(resumed["head_optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        start, history, best = int(resumed["epoch"]) + 1, list(resumed["history"]), resumed["best"]
        resumes = int(resumed["resumes"]) + 1  # recorded per epoch: shows which epochs ran after a restart
        if session.rank == 0:
            print(f"[{job.name}] resuming after epoch {start} of {optim.head_only_epochs + optim.epochs}", flush=True)

    for epoch in range(start, total_epochs):
        head_only = epoch < optim.head_only_epochs
        if hasattr(train_loader, "sampler") and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        # Every random stream restarts from (seed, epoch): data order, augmentation, dropout and
        # CSADA's pair draws are the same whether or not the run was interrupted and resumed.
        epoch_seed = job.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        generator.manual_seed(epoch_seed)
        if hasattr(method, "generator"):
            method.generator.manual_seed(epoch_seed)
        with _phase(plain, head_only):
            stats = train_epoch(model, method, train_loader, head_optimizer if head_only else optimizer,
                                device=session.device)
        if not head_only:
            scheduler.step()
        logits, labels = predict_logits(plain, val_loader, device=session.device)
        metrics = {"epoch": epoch, "resumes": resumes, **{f"train_{k}": v for k, v in stats.items()},
                   **validation_metrics(logits, labels, cost)}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"{job.name}: non-finite metrics at epoch {epoch}: {metrics}")
        history.append(metrics)
        if session.rank == 0:
            shown = " ".join(f"{k} {metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_accuracy", "val_wer")
                             if k in metrics)
            print(f"[{job.name}] epoch {epoch + 1}/{total_epochs} {shown}", flush=True)
        model_state = plain.state_dict()
        if best is None or metrics[job.select_metric] < best["metric"]:
            # Ties keep the earlier epoch. The selected weights travel inside every checkpoint, so
            # only the latest checkpoint is needed, for both resuming and the final answer.
            best = {"epoch": epoch, "metric": metrics[job.select_metric],
                    "model": {k: v.detach().clone() for k, v in model_state.items()}}
        state = {
            "model": model_state,
            "optimizer": optimizer.state_dict(),
            "head_optimizer": head_optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": history,
            "best": best,
            "resumes": resumes,
            "job": job.to_dict(),
        }
        session.report(metrics, state)


