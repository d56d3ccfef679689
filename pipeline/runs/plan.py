"""The fine-tuning jobs: the search's trials and the replications, built the same way.

Both continue the baseline run: the same data, model and label column as the job that trained the
baseline (recorded in its history.json), from its selected weights, with a method's settings and
the cost matrix. They differ in name, seed and replication. The input files (the baseline
checkpoint may be a large ResNet) are hashed once per stage by :func:`finetune_inputs_digest`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.config import MethodConfig
from pipeline.datasets.prepare import FETCHED_FILE
from pipeline.runs.checkpoints import HISTORY_FILE, MODEL_FILE
from pipeline.runs.jobs import TrainJob, digest_files


def baseline_job(baseline_dir: Path) -> TrainJob:
    """The job that trained the baseline in ``baseline_dir``, as its history.json records it."""
    return TrainJob.from_dict(json.loads((baseline_dir / HISTORY_FILE).read_text())["job"])


def finetune_inputs_digest(baseline: TrainJob, cost_csv: Path, baseline_dir: Path) -> str:
    """Content hash of what fine-tuning reads: the fetched data, the split, the costs, the weights."""
    return digest_files([Path(baseline.raw_dir) / FETCHED_FILE, Path(baseline.manifest), cost_csv,
                         baseline_dir / MODEL_FILE])


def finetune_job(baseline: TrainJob, method: MethodConfig, *, cost_csv: Path, baseline_dir: Path, name: str,
                 seed: int, replication: int | None, digest: str) -> TrainJob:
    """A run of ``method`` from the baseline's weights, keeping its best epoch by validation WER."""
    return dataclasses.replace(
        baseline,
        name=name,
        cost_csv=cost_csv.as_posix(),
        method=method.name,
        method_options=dict(method.options),
        optim=dataclasses.asdict(method.optim),
        seed=seed,
        select_metric="val_wer",
        init_checkpoint=(baseline_dir / MODEL_FILE).as_posix(),
        replication=replication,
        inputs_digest=digest,
    )
