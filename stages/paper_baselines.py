"""DVC stage 'paper_baselines' (paper/dvc.yaml): section 1.1's two baselines of one model.

``fit`` stops after the first epoch that reaches 100% training accuracy; ``zero_loss`` trains on
until its training loss is below ``paper.baselines.zero_loss`` (the paper's baselines: 1e-3).
Both are plain ERM with the recipe's baseline settings, at most ``paper.baselines.max_epochs``
epochs, keeping their last epoch; both train as one Ray Tune sweep. Outcomes land in
models/<dataset>/paper/baselines/<name>/ (model.pt, history.json).
"""

import dataclasses
import json
from pathlib import Path

from pipeline.cluster.distributed import run_jobs
from pipeline.config import Config
from pipeline.datasets.prepare import FETCHED_FILE
from pipeline.fileio import fresh_dir, replace_dir
from pipeline.paper.experiments import BASELINES, baseline_fit, paper_models
from pipeline.runs.checkpoints import HISTORY_FILE
from pipeline.runs.jobs import TrainJob, digest_files
from pipeline.stage import run_stage


def paper_baseline_jobs(config: Config) -> dict[str, TrainJob]:
    """The two baselines of section 1.1: the recipe's baseline settings, at most
    ``paper.baselines.max_epochs`` epochs, stopped by training accuracy 1 or by the training loss."""
    optim = dataclasses.replace(config.baseline, epochs=config.paper.baseline_max_epochs)
    stops = {"fit": {"stop_train_accuracy": 1.0}, "zero_loss": {"stop_train_loss": config.paper.zero_loss}}
    return {
        name: TrainJob(
            name=f"{config.dataset}-paper-{name}", dataset=config.dataset, raw_dir=config.paths.raw.as_posix(),
            manifest=config.paths.manifest.as_posix(), cost_csv=None, model=config.model,
            model_options=dict(config.model_options), pretrained=config.pretrained, method="erm", method_options={},
            optim=dataclasses.asdict(dataclasses.replace(optim, **stops[name])), seed=config.seed,
            select_metric="last", label_column=config.data.label_column,
            inputs_digest=digest_files([config.paths.raw / FETCHED_FILE, config.paths.manifest]),
        )
        for name in BASELINES
    }


def main(config: Config) -> str:
    jobs = paper_baseline_jobs(config)
    stores = run_jobs(list(jobs.values()), config.ray, Path.cwd(), experiment="paper_baselines")
    destination = paper_models(config.dataset) / "baselines"
    staging = Path(fresh_dir(destination.with_name(f".{destination.name}.partial")))
    for name, store in zip(jobs, stores):
        store.copy_outcome(staging / name)
    replace_dir(staging, destination)
    said = []
    for name in jobs:
        fit = baseline_fit(name, json.loads((destination / name / HISTORY_FILE).read_text())["history"][-1],
                           config.paper.zero_loss)
        said.append(f"{name}: {fit['epochs']} epochs, training accuracy {fit['train_accuracy']:.4f}, "
                    f"loss {fit['train_loss']:.2g}" + ("" if fit["reached"] else " (criterion NOT reached)"))
    return "; ".join(said) + f" -> {destination}"

if __name__ == "__main__":
    run_stage("paper_baselines", main)
