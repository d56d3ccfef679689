"""DVC stage 'finetune': every method x replication, fine-tuned from the baseline, as one Ray Tune sweep.

Each method runs with the settings the search stage chose on validation
(models/search/chosen.json), for ``finetune.replications`` fresh seeds; each run's
epoch is selected by validation WER. Outcomes land in models/finetune/<run>/, listed in
runs.json (the index the evaluate stage reads).
"""

import json
from pathlib import Path

from pipeline.cluster.distributed import run_jobs
from pipeline.cluster.search import apply_choice
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.fileio import atomic_write_text, fresh_dir, replace_dir
from pipeline.runs.jobs import TrainJob
from pipeline.runs.plan import baseline_job, finetune_inputs_digest, finetune_job
from pipeline.stage import run_stage

RUNS_INDEX = "runs.json"
CHOSEN_FILE = "chosen.json"  # written by the search stage


def finetune_jobs(config: Config) -> list[TrainJob]:
    """One job per method and replication, with the search's settings for each method."""
    chosen = json.loads((config.paths.search / CHOSEN_FILE).read_text())["methods"]
    absent = [m.name for m in config.methods if m.name not in chosen]
    if absent:
        raise UserError(f"{config.paths.search / CHOSEN_FILE} has no settings for {', '.join(absent)}; "
                        "re-run the search stage (dvc repro search)")
    baseline = baseline_job(config.paths.baseline)
    digest = finetune_inputs_digest(baseline, config.paths.cost, config.paths.baseline)
    return [
        # Replications differ in their seed: data order, pair draws and augmentation.
        finetune_job(baseline, apply_choice(method, chosen[method.name]["settings"]), cost_csv=config.paths.cost,
                     baseline_dir=config.paths.baseline, name=f"{config.dataset}-{method.name}-r{replication}",
                     seed=config.seed * 1000 + replication, replication=replication, digest=digest)
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
