"""Everything about a list of training jobs that can fail without training, checked before Ray starts.

A run that fails inside a Ray worker costs a cluster start, a traceback per retry and a minute of
waiting; the same error found here is one line, at once. For each distinct input the stage's
process loads what a run would load and builds what it would build, on PyTorch's ``meta`` device
(shapes only, no memory, no weights):

* the data with the run's manifest (non-numeric or NaN features, stale manifests) and the
  splits training reads, each non-empty;
* the cost matrix (finite, in range, the data's classes in the data's order);
* the model with its options, and the method with its options and costs;
* the checkpoint a fine-tuning run starts from: readable, and made for that model.

Only a run's own computation is left to the workers: divergence (pipeline.runs.train.check_diverged)
shows only while training.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline.datasets.common import DatasetError
from pipeline.datasets.prepare import load_prepared
from pipeline.method.costfiles import load_costs
from pipeline.method.losses import MethodContext
from pipeline.method.registry import build_method
from pipeline.models.networks import ModelConfigError
from pipeline.models.registry import build_model
from pipeline.runs.checkpoints import load_checkpoint, load_model_state
from pipeline.runs.jobs import TrainJob
from pipeline.validation import RECIPE_DIR


def check_jobs(jobs: list[TrainJob], root: Path) -> None:
    """Raise the first :class:`~pipeline.errors.UserError` any of ``jobs`` would meet before its
    first training step (module doc); paths are relative to the project ``root``."""
    data_of: dict[tuple[Any, ...], Any] = {}
    costs_of: dict[str, torch.Tensor] = {}
    checked: set[tuple[Any, ...]] = set()
    for job in jobs:
        key = (job.dataset, job.raw_dir, job.manifest, job.label_column)
        if key not in data_of:
            data_of[key] = _data(job, root)
        data = data_of[key]
        cost = None
        if job.cost_csv is not None:
            if job.cost_csv not in costs_of:
                matrix = load_costs(job.path(root, "cost_csv"))
                matrix.check_classes(data.classes)
                costs_of[job.cost_csv] = matrix.as_tensor()
            cost = costs_of[job.cost_csv]
        build = (job.model, repr(sorted(job.model_options.items())), job.method, repr(sorted(job.method_options.items())),
                 job.cost_csv, job.init_checkpoint)
        if build not in checked:
            _build(job, root, data, cost)
            checked.add(build)


def _data(job: TrainJob, root: Path) -> Any:
    data = load_prepared(job.dataset, job.path(root, "raw_dir"), job.path(root, "manifest"), augment=False,
                         label_column=job.label_column)
    for split in ("train", "val", *(("test",) if job.track_test else ())):
        if len(data.split(split)) == 0:
            raise DatasetError(f"the {split} split of {job.manifest} is empty; re-run the split stage")
    return data


def _build(job: TrainJob, root: Path, data: Any, cost: torch.Tensor | None) -> None:
    """The run's model (with its starting checkpoint) and method, as ``build_run`` makes them."""
    # Loading real weights into meta tensors checks names and shapes and copies nothing; torch
    # warns that the copy is a no-op, which is the point here.
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            model = build_model(job.model, num_classes=data.num_classes, input_shape=data.input_shape,
                                pretrained=False, **job.model_options)
        except ModelConfigError as error:  # the options come from the data set's recipe
            raise ModelConfigError(f"{RECIPE_DIR}/{job.dataset}.yaml: model_options {dict(job.model_options)}: "
                                   f"{error}") from None
        if job.init_checkpoint is not None:
            load_model_state(model, load_checkpoint(job.path(root, "init_checkpoint")), job.init_checkpoint)
        method = build_method(job.method, job.method_options,
                              MethodContext(cost=cost, input_bounds=data.input_bounds(), seed=job.seed))
        method.prepare_model(model)
