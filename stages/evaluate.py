"""DVC stage 'evaluate': every trained model on the test split, under every decision rule.

The models are the baseline and the runs listed in models/finetune/runs.json; each is
rebuilt from the job its model.pt records, and also scored on the validation split to choose the
recommended model. Writes the DVC metrics, tables and plots of pipeline.reporting.outputs.write_evaluation
and the PNG figures of pipeline.reporting.figures. Warns when the baseline makes so few validation
errors that the recommendation means little (pipeline.reporting.recommendation.small_validation_warning).
"""

import dataclasses
import json
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from pipeline.cluster.distributed import on_gpu_worker
from pipeline.config import RECIPE_DIR, Config, ConfigError
from pipeline.console import fit
from pipeline.datasets import ClassificationData
from pipeline.datasets.prepare import load_prepared
from pipeline.method.calibration import fit_temperature
from pipeline.method.costfiles import load_costs
from pipeline.method.costs import CostMatrix
from pipeline.reporting.evaluation import (
    BASELINE,
    BASELINE_CURVE,
    BASELINE_RULE,
    DISPLAY_NAMES,
    FINETUNE_CURVE,
    PAIR_ERRORS_CSV,
    SUMMARY_FILE,
    RunPredictions,
    evaluate_run,
    ordered_methods,
)
from pipeline.reporting.figures import confusion_figure, curves_figure, mean_errors, wer_figure
from pipeline.reporting.outputs import write_evaluation
from pipeline.reporting.recommendation import small_validation_warning
from pipeline.runs.checkpoints import HISTORY_FILE
from pipeline.runs.plan import baseline_job
from pipeline.runs.train import predict_logits, trained_model
from pipeline.stage import run_stage

RUNS_INDEX = "runs.json"  # written by the finetune stage
FIGURES = "figures"


def trained_runs(baseline: Path, finetune: Path) -> list[tuple[str, int | None, Path]]:
    """(method, replication, outcome folder) of the baseline and every fine-tuning run."""
    index = json.loads((finetune / RUNS_INDEX).read_text())
    return [("baseline", None, baseline)] + [(run["method"], run["replication"], finetune / run["name"])
                                             for run in index]


def split_predictions(runs: list[tuple[str, int | None, Path]], data: ClassificationData, cost: CostMatrix,
                      split: str, device: str = "cpu") -> list[RunPredictions]:
    """Each run's outputs on one split (``test`` for the report, ``val`` for choosing), with its history."""
    loader = DataLoader(data.split(split), batch_size=256, shuffle=False)
    predictions = []
    for method, replication, directory in runs:
        model = trained_model(directory, data, cost.as_tensor())
        logits, labels = predict_logits(model.to(device), loader, device=device)
        history = json.loads((directory / HISTORY_FILE).read_text())["history"]
        predictions.append(RunPredictions(method=method, replication=replication, logits=logits,
                                          labels=labels, history=history))
    return predictions


def validation_wer(predictions: list[RunPredictions], cost: CostMatrix) -> dict[str, dict[str, float]]:
    """Run name -> {decision rule: WER on the validation split}."""
    return {run.name: {rule: metrics["wer"] for rule, metrics in evaluate_run(run, cost, top_k=0).items()}
            for run in predictions}


def baseline_errors(predictions: list[RunPredictions], cost: CostMatrix) -> tuple[int, int]:
    """(errors, samples) of the baseline under its rule on the split of ``predictions``."""
    run = next(run for run in predictions if run.method == BASELINE)
    metrics = evaluate_run(run, cost, top_k=0, rules=(BASELINE_RULE,))[BASELINE_RULE]
    return int(metrics["error_count"]), len(run.labels)


def calibrated(predictions: list[RunPredictions], temperatures: list[float]) -> list[RunPredictions]:
    return [dataclasses.replace(run, temperature=t) for run, t in zip(predictions, temperatures)]


def predict(baseline: Path, finetune: Path, cost_file: Path, device: str = "cpu"):
    """Every run's test predictions, validation WERs and the baseline's validation (errors,
    samples) (a GPU worker may run this).

    Each model's temperature is fitted on its validation outputs, then applied to both splits
    under the calibrated rule: the test split is never looked at to choose anything."""
    runs = trained_runs(baseline, finetune)
    job = baseline_job(baseline)
    data = load_prepared(job.dataset, Path(job.raw_dir), Path(job.manifest), augment=False,
                         label_column=job.label_column)
    cost = load_costs(cost_file)
    cost.check_classes(data.classes)
    validation = split_predictions(runs, data, cost, "val", device)
    temperatures = [fit_temperature(run.logits, run.labels) for run in validation]
    predictions = calibrated(split_predictions(runs, data, cost, "test", device), temperatures)
    return predictions, validation_wer(calibrated(validation, temperatures), cost), baseline_errors(validation, cost)


def draw_figures(results: Path, cost: CostMatrix) -> None:
    """results/figures/{wer,confusion,curves}.png from what write_evaluation wrote.

    The confusion figure shows one model per panel: the baseline, and the recommended method's
    test errors averaged over its replications (pooled, three runs' errors would face one)."""
    summary = json.loads((results / SUMMARY_FILE).read_text())
    methods, chosen = summary["methods"], summary["recommendation"]
    wer_figure(methods, ordered_methods(methods), DISPLAY_NAMES, results / FIGURES / "wer.png")
    pairs = pd.read_csv(results / PAIR_ERRORS_CSV, dtype={"true_class": str, "predicted_class": str})
    baseline, _ = mean_errors(pairs, BASELINE, BASELINE_RULE, cost.classes)
    recommended, runs = mean_errors(pairs, chosen["method"], chosen["decision_rule"], cost.classes)
    name = f"{DISPLAY_NAMES.get(chosen['method'], chosen['method'])}, {chosen['decision_rule']}"
    each = f"mean of its {runs} replications" if runs > 1 else "one run"
    panels = [(f"Baseline ({BASELINE_RULE})", baseline), (f"Recommended on validation: {name}\n({each})", recommended)]
    confusion_figure(panels, cost.classes, cost.values, results / FIGURES / "confusion.png")
    curves_figure(pd.read_csv(results / BASELINE_CURVE), pd.read_csv(results / FINETUNE_CURVE), DISPLAY_NAMES,
                  results / FIGURES / "curves.png")


def main(config: Config) -> str:
    root = Path.cwd()
    cost = load_costs(config.paths.cost)
    pairs = cost.num_classes * (cost.num_classes - 1)
    if config.top_k > pairs:  # checked before any model is scored
        raise ConfigError(f"{RECIPE_DIR}/{config.dataset}.yaml: evaluate.top_k = {config.top_k} is invalid; "
                          f"the {cost.num_classes} classes have {pairs} ordered pairs: at most that many")
    predictions, validation, val_errors = on_gpu_worker(
        config.ray.address, config.ray.use_gpu, root / "runs" / "logs" / "evaluate.log", predict,
        root / config.paths.baseline, root / config.paths.finetune, root / config.paths.cost)
    write_evaluation(predictions, cost, config.paths.evaluation, top_k=config.top_k, validation=validation,
                     baseline_val_errors=val_errors)
    draw_figures(config.paths.evaluation, cost)
    warning = small_validation_warning({"baseline_val_errors": val_errors[0], "val_samples": val_errors[1]})
    if warning:
        print(fit(f"evaluate: warning: {warning}"), flush=True)
    return f"{len(predictions)} models on {len(predictions[0].labels)} test samples -> {config.paths.evaluation}"


if __name__ == "__main__":
    run_stage("evaluate", main)
