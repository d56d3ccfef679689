"""DVC stage 'finetune': every method x replication, fine-tuned from the baseline, as one Ray Tune sweep.

Each run's epoch is selected by validation WER. Outcomes land in models/<dataset>/finetune/<run>/,
listed in runs.json (the index the evaluate stage reads).
"""

import dataclasses
import json
from pathlib import Path

from pipeline.config import Config
from pipeline.distributed import run_jobs
from pipeline.fileio import atomic_write_text, fresh_dir, replace_dir
from pipeline.jobs import TrainJob, digest_files
from pipeline.prepare import FETCHED_FILE
from pipeline.stage import run_stage

RUNS_INDEX = "runs.json"


def finetune_jobs(config: Config) -> list[TrainJob]:
    """One job per method and replication. The input files (the baseline checkpoint may be a
    large ResNet) are hashed once for the whole sweep, not once per job."""
    init = config.paths.baseline / "model.pt"
    digest = digest_files([config.paths.raw / FETCHED_FILE, config.paths.manifest, config.paths.cost, init])
    return [
        TrainJob(
            name=f"{config.dataset}-{method.name}-r{replication}",
            dataset=config.dataset,
            raw_dir=config.paths.raw.as_posix(),
            manifest=config.paths.manifest.as_posix(),
            cost_csv=config.paths.cost.as_posix(),
            model=config.model,
            model_options=dict(config.model_options),
            pretrained=config.pretrained,
            method=method.name,
            method_options=dict(method.options),
            optim=dataclasses.asdict(method.optim),
            # Replications differ in their seed: data order, pair draws and augmentation.
            seed=config.seed * 1000 + replication,
            select_metric="val_wer",
            init_checkpoint=init.as_posix(),
            label_column=config.data.label_column,
            replication=replication,
            inputs_digest=digest,
        )
        for method in config.methods
        for replication in range(config.replications)
    ]


def main(config: Config) -> str:
    jobs = finetune_jobs(config)
    stores = run_jobs(jobs, config.ray, Path.cwd(), experiment="finetune")
    staging = Path(fresh_dir(config.paths.finetune.with_name(f".{config.paths.finetune.name}.partial")))
    for job, store in zip(jobs, stores):
        store.copy_outcome(staging / job.name)
    index = [{"name": job.name, "method": job.method, "replication": job.replication} for job in jobs]
    atomic_write_text(staging / RUNS_INDEX, json.dumps(index, indent=1) + "\n")
    replace_dir(staging, config.paths.finetune)
    return (f"{len(jobs)} runs ({', '.join(m.name for m in config.methods)} x {config.replications}), "
            f"each at its best epoch by validation WER -> {config.paths.finetune}")


if __name__ == "__main__":
    run_stage("finetune", main)
