"""DVC stage 'evaluate': every trained model on the test split, under every decision rule.

The models are the baseline and the runs listed in models/<dataset>/finetune/runs.json; each is
rebuilt from the job its model.pt records. Writes the DVC metrics, tables and plots of
pipeline.evaluation.write_evaluation.
"""

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.checkpoints import HISTORY_FILE
from pipeline.config import Config
from pipeline.costs import CostMatrix
from pipeline.datasets import ClassificationData
from pipeline.evaluation import RunPredictions, write_evaluation
from pipeline.jobs import TrainJob
from pipeline.prepare import load_prepared
from pipeline.stage import run_stage
from pipeline.train import predict_logits, trained_model

RUNS_INDEX = "runs.json"  # written by the finetune stage


def trained_runs(baseline: Path, finetune: Path) -> list[tuple[str, int | None, Path]]:
    """(method, replication, outcome folder) of the baseline and every fine-tuning run."""
    index = json.loads((finetune / RUNS_INDEX).read_text())
    return [("baseline", None, baseline)] + [(run["method"], run["replication"], finetune / run["name"])
                                             for run in index]


def test_predictions(runs: list[tuple[str, int | None, Path]], data: ClassificationData, cost: CostMatrix,
                     device: str = "cpu") -> list[RunPredictions]:
    """Each run's outputs on the test split, with its history."""
    loader = DataLoader(data.split("test"), batch_size=256, shuffle=False)
    predictions = []
    for method, replication, directory in runs:
        model = trained_model(directory, data, cost.as_tensor())
        logits, labels = predict_logits(model.to(device), loader, device=device)
        history = json.loads((directory / HISTORY_FILE).read_text())["history"]
        predictions.append(RunPredictions(method=method, replication=replication, logits=logits,
                                          labels=labels, history=history))
        print(f"evaluate: {directory.name}: test accuracy {(logits.argmax(1) == labels).float().mean():.4f}")
    return predictions


def main(config: Config) -> None:
    runs = trained_runs(config.paths.baseline, config.paths.finetune)
    job = TrainJob.from_dict(json.loads((config.paths.baseline / HISTORY_FILE).read_text())["job"])
    data = load_prepared(job.dataset, Path(job.raw_dir), Path(job.manifest), augment=False,
                         label_column=job.label_column)
    cost = CostMatrix.load(config.paths.cost)
    cost.check_classes(data.classes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_evaluation(test_predictions(runs, data, cost, device), cost, config.paths.evaluation, top_k=config.top_k)


if __name__ == "__main__":
    run_stage("evaluate", main)
