"""DVC stage 'baseline': the model trained with plain ERM, its epoch selected by validation loss.

One Ray Tune trial (resumable: see pipeline.cluster.distributed); the outcome is models/baseline/
with model.pt (the selected weights and the job that trained them) and history.json.
"""

import dataclasses
import json
from pathlib import Path

from pipeline.cluster.distributed import run_jobs
from pipeline.config import Config
from pipeline.datasets.prepare import FETCHED_FILE
from pipeline.fileio import fresh_dir, replace_dir
from pipeline.runs.checkpoints import HISTORY_FILE
from pipeline.runs.jobs import TrainJob, digest_files
from pipeline.stage import run_stage


def baseline_job(config: Config) -> TrainJob:
    return TrainJob(
        name=f"{config.dataset}-baseline",
        dataset=config.dataset,
        raw_dir=config.paths.raw.as_posix(),
        manifest=config.paths.manifest.as_posix(),
        cost_csv=None,  # ERM needs no costs: a new cost matrix does not retrain the baseline
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
        inputs_digest=digest_files([config.paths.raw / FETCHED_FILE, config.paths.manifest]),
    )


def main(config: Config) -> str:
    job = baseline_job(config)
    [store] = run_jobs([job], config.ray, Path.cwd(), experiment="baseline")
    staging = Path(fresh_dir(config.paths.baseline.with_name(f".{config.paths.baseline.name}.partial")))
    store.copy_outcome(staging)
    replace_dir(staging, config.paths.baseline)
    best = json.loads((config.paths.baseline / HISTORY_FILE).read_text())["best_epoch"]
    return (f"{config.model} on {config.dataset}, epoch {best + 1} of {config.baseline.epochs} selected by "
            f"validation loss -> {config.paths.baseline}")


if __name__ == "__main__":
    run_stage("baseline", main)
