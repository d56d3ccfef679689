"""DVC stage 'paper_convergence' (paper/dvc.yaml): CSADA's training objective and test WER per
epoch (section 5.2, Figure 6).

From the zero-loss baseline, CSADA with ``paper.convergence.csada`` (the paper: lambda 2) on the
data set's cost matrix, ``paper.convergence.replications`` seeds (the paper: 10), every run also
scoring the test split after each epoch (the curves only: nothing is chosen on them). One Ray
Tune sweep. Writes results/convergence.json (mean and 90% prediction interval per epoch),
results/convergence.csv (every run and epoch) and results/figures/convergence.png.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cluster.distributed import run_jobs
from pipeline.config import Config
from pipeline.paper.experiments import costed_test, curve_summary, experiment_job
from pipeline.paper.figures import convergence_figure
from pipeline.paper.protocols import settings_record
from pipeline.reporting.outputs import write_csv, write_json
from pipeline.runs.checkpoints import HISTORY_FILE
from pipeline.runs.plan import baseline_job
from pipeline.stage import run_stage

RESULTS = Path("results")


def main(config: Config) -> str:
    test = costed_test(config.dataset, config.paths.raw, config.paths.manifest, config.data.label_column,
                       config.paths.cost)
    baseline_dir, baseline_wer = test.baseline_dir, test.wer(test.baseline_logits)
    runs = [(variant.label, replication) for variant in config.paper.variants
            for replication in range(config.paper.convergence_replications)]
    jobs = [experiment_job(baseline_job(baseline_dir), baseline_dir, config.paper.convergence_method[variant],
                           config.paths.cost, name=f"{config.dataset}-convergence-{variant}-r{replication}",
                           seed=config.seed * 1000 + replication, replication=replication, track_test=True)
            for variant, replication in runs]
    stores = run_jobs(jobs, config.ray, Path.cwd(), experiment="paper_convergence")
    histories = [store.read_json(f"outcome/{HISTORY_FILE}")["history"] for store in stores]
    table = pd.DataFrame([{"variant": variant, "replication": r, "epoch": int(epoch["epoch"]) + 1,
                           "train_loss": epoch["train_loss"], "test_wer": epoch["test_wer"],
                           "test_accuracy": epoch["test_accuracy"]}
                          for (variant, r), history in zip(runs, histories) for epoch in history])
    results = {"baseline_wer": baseline_wer, "verdict_variant": config.paper.verdict.label, "variants": {}}
    for variant in config.paper.variants:
        method = config.paper.convergence_method[variant.label]
        mine = [h for (label, _), h in zip(runs, histories) if label == variant.label]
        results["variants"][variant.label] = {
            "train_loss": curve_summary(np.array([[e["train_loss"] for e in h] for h in mine])),
            "test_wer": curve_summary(np.array([[baseline_wer] + [e["test_wer"] for e in h] for h in mine])),
            "settings": settings_record(method.optim, method.options)}
    write_csv(table, RESULTS / "convergence.csv")
    write_json(results, RESULTS / "convergence.json")
    verdict = results["variants"][config.paper.verdict.label]
    method = config.paper.convergence_method[config.paper.verdict.label]
    convergence_figure(verdict["train_loss"], verdict["test_wer"], baseline_wer,
                       f"CSADA on {config.dataset} ({config.model}) from the zero-loss baseline, "
                       f"{config.paper.verdict.label}, lambda {method.options['adv_weight']:g}, "
                       f"{config.paper.convergence_replications} replications",
                       RESULTS / "figures" / "convergence.png")
    wer = verdict["test_wer"]
    return (f"{len(jobs)} runs; {config.paper.verdict.label}: test WER {baseline_wer:.4f} -> {wer['mean'][-1]:.4f} "
            f"after {method.optim.epochs} epochs (90% PI {wer['lower'][-1]:.4f} to {wer['upper'][-1]:.4f}) "
            f"-> {RESULTS / 'convergence.json'}")


if __name__ == "__main__":
    run_stage("paper_convergence", main)
