"""A training run's identity: what it trains, on which inputs, with which code.

A :class:`TrainJob` is everything one run needs, as plain values (it travels to Ray workers as a
dict). Its input paths are relative to the project root, so a job, and everything written from
it, reads the same in every checkout. Its :func:`fingerprint` hashes

* the job's settings (model, method, optimisation, seed, ...), without the paths,
* its input files by content (``inputs_digest``, computed once by the stage), and
* the code of the modules the training code imports (:func:`pipeline.codedeps.code_digest`:
  their statements, not their paths, so moving a module retrains nothing),

so a run is reused or resumed only by an identical job run by identical code, wherever the
project sits, and an edit to code the training never runs (the report, the Ray edge) leaves
every run reusable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.codedeps import code_digest

# The module whose imports make up the training code (it holds ``train_func``), named relative to
# this one so that the name moves with the package and leaves the run keys alone.
TRAINING_MODULE = f"{__package__}.train"
_PATH_FIELDS = ("raw_dir", "manifest", "cost_csv", "init_checkpoint")


@dataclass(frozen=True)
class TrainJob:
    """One training run, as plain values; paths are relative to the project root."""

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
    # The epoch a run hands back: lowest "val_loss" (baseline) or "val_wer" (fine-tuning), or
    # "last" (the paper's protocol: a fixed number of epochs, the last one reported).
    select_metric: str
    init_checkpoint: str | None = None
    label_column: str = "label"
    replication: int | None = None
    inputs_digest: str = ""  # content hash of the input files: a changed input is a different job
    track_test: bool = False  # also score the test split every epoch (the convergence experiment's curves)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainJob:
        return cls(**values)

    def path(self, root: Path, field: str) -> Path | None:
        """Input ``field`` (one of the path fields) under the project ``root``."""
        value = getattr(self, field)
        return None if value is None else root / value


def fingerprint(job: TrainJob) -> str:
    """Short hash of the job's settings, its inputs' digest and the training code (module doc)."""
    settings = {k: v for k, v in job.to_dict().items() if k not in _PATH_FIELDS}
    settings["has"] = [k for k in _PATH_FIELDS if getattr(job, k) is not None]
    text = json.dumps(settings, sort_keys=True, default=str) + code_digest(TRAINING_MODULE)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def run_name(job: TrainJob) -> str:
    """The run's folder name under ``ray.storage_path``: the job's name and its fingerprint."""
    return f"{job.name}-{fingerprint(job)}"


def digest_files(paths: list[Path]) -> str:
    """sha256 over the contents of the given files, in order (a missing file counts as its name)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        if path.is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
