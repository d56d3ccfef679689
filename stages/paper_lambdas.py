"""DVC stage 'paper_lambdas' (paper/dvc.yaml): test WER against lambda (section 5.2, Figure 5).

From the zero-loss baseline (models/<dataset>/paper/baselines/zero_loss), CSADA fine-tunes on the
data set's cost matrix with each lambda of ``paper.lambdas.values`` for ``paper.replications``
seeds, keeping its last epoch; lambda 0 is the baseline itself (CSADA's objective is then plain
ERM). One Ray Tune sweep. Writes results/lambdas.json (mean and 90% prediction interval of the
test WER per lambda), results/lambdas.csv (every run) and results/figures/lambdas.png.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cluster.distributed import run_jobs
from pipeline.config import Config
from pipeline.paper.experiments import (
    costed_test,
    curve_summary,
    experiment_job,
    run_outcomes,
)
from pipeline.paper.figures import lambda_figure
from pipeline.paper.protocols import settings_record
from pipeline.reporting.outputs import write_csv, write_json
from pipeline.runs.plan import baseline_job
from pipeline.stage import run_stage

RESULTS = Path("results")


def main(config: Config) -> str:
    test = costed_test(config.dataset, config.paths.raw, config.paths.manifest, config.data.label_column,
                       config.paths.cost)
    baseline_dir, baseline_wer = test.baseline_dir, test.wer(test.baseline_logits)
    replications = range(config.paper.replications)
    trained = [value for value in config.paper.lambdas if value > 0]
    runs = [(variant.label, value, replication) for variant in config.paper.variants for value in trained
            for replication in replications]
    jobs = []
    for variant, value, replication in runs:
        method = config.paper.lambda_method[variant]
        jobs.append(experiment_job(baseline_job(baseline_dir), baseline_dir,
                                   dataclasses.replace(method, options={**method.options, "adv_weight": value}),
                                   config.paths.cost, name=f"{config.dataset}-lambda-{variant}-{value:g}-r{replication}",
                                   seed=config.seed * 1000 + replication, replication=replication))
    stores = run_jobs(jobs, config.ray, Path.cwd(), experiment="paper_lambdas")
    outcomes = run_outcomes(stores, [test.costs] * len(stores), test.data, test.loader)
    baseline_accuracy = float((test.baseline_logits.argmax(1) == test.labels).float().mean())
    table = pd.DataFrame(
        [{"variant": v.label, "lambda": 0.0, "replication": r, "wer": baseline_wer, "accuracy": baseline_accuracy}
         for v in config.paper.variants for r in replications]
        + [{"variant": variant, "lambda": value, "replication": replication, "wer": test.wer(logits),
            "accuracy": float((logits.argmax(1) == test.labels).float().mean())}
           for (variant, value, replication), (logits, _) in zip(runs, outcomes)])
    lambdas = sorted(config.paper.lambdas)
    results = {"lambdas": lambdas, "baseline_wer": baseline_wer, "replications": config.paper.replications,
               "verdict_variant": config.paper.verdict.label, "variants": {}}
    for variant in config.paper.variants:
        part = table[table["variant"] == variant.label]
        grid = np.array([[part[(part["lambda"] == value) & (part["replication"] == r)]["wer"].item()
                          for value in lambdas] for r in replications])
        accuracy = np.array([[part[(part["lambda"] == value) & (part["replication"] == r)]["accuracy"].item()
                              for value in lambdas] for r in replications])
        method = config.paper.lambda_method[variant.label]
        results["variants"][variant.label] = {"wer": curve_summary(grid), "accuracy": curve_summary(accuracy),
                                              "settings": settings_record(method.optim, method.options)}
    write_csv(table, RESULTS / "lambdas.csv")
    write_json(results, RESULTS / "lambdas.json")
    verdict = results["variants"][config.paper.verdict.label]
    method = config.paper.lambda_method[config.paper.verdict.label]
    lambda_figure(lambdas, verdict["wer"], baseline_wer,
                  f"Test WER against lambda on {config.dataset} ({config.model}), CSADA from the zero-loss "
                  f"baseline,\n{config.paper.verdict.label}: {method.optim.epochs} epochs at lr {method.optim.lr:g}, "
                  "last epoch", RESULTS / "figures" / "lambdas.png")
    best = int(np.argmin(verdict["wer"]["mean"]))
    return (f"{len(jobs)} runs; {config.paper.verdict.label}: lowest mean test WER {verdict['wer']['mean'][best]:.4f} "
            f"at lambda {lambdas[best]:g} (baseline {baseline_wer:.4f}) -> {RESULTS / 'lambdas.json'}")


if __name__ == "__main__":
    run_stage("paper_lambdas", main)
