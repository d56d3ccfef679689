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
from pipeline.reporting.outputs import write_csv, write_json
from pipeline.runs.checkpoints import HISTORY_FILE
from pipeline.runs.plan import baseline_job
from pipeline.stage import run_stage

RESULTS = Path("results")


def main(config: Config) -> str:
    test = costed_test(config.dataset, config.paths.raw, config.paths.manifest, config.data.label_column,
                       config.paths.cost)
    baseline_dir, baseline_wer = test.baseline_dir, test.wer(test.baseline_logits)

    method = config.paper.convergence_method
    jobs = [experiment_job(baseline_job(baseline_dir), baseline_dir, method, config.paths.cost,
                           name=f"{config.dataset}-convergence-r{replication}", seed=config.seed * 1000 + replication,
                           replication=replication, track_test=True)
            for replication in range(config.paper.convergence_replications)]
    stores = run_jobs(jobs, config.ray, Path.cwd(), experiment="paper_convergence")
    histories = [store.read_json(f"outcome/{HISTORY_FILE}")["history"] for store in stores]
    table = pd.DataFrame([{"replication": r, "epoch": int(epoch["epoch"]) + 1, "train_loss": epoch["train_loss"],
                           "test_wer": epoch["test_wer"], "test_accuracy": epoch["test_accuracy"]}
                          for r, history in enumerate(histories) for epoch in history])
    loss = curve_summary(np.array([[e["train_loss"] for e in h] for h in histories]))
    wer = curve_summary(np.array([[baseline_wer] + [e["test_wer"] for e in h] for h in histories]))
    write_csv(table, RESULTS / "convergence.csv")
    write_json({"train_loss": loss, "test_wer": wer, "baseline_wer": baseline_wer,
                "settings": {"epochs": method.optim.epochs, "lr": method.optim.lr, **method.options}},
               RESULTS / "convergence.json")
    convergence_figure(loss, wer, baseline_wer,
                       f"CSADA on {config.dataset} ({config.model}) from the zero-loss baseline, "
                       f"lambda {method.options['adv_weight']:g}, {len(jobs)} replications",
                       RESULTS / "figures" / "convergence.png")
    return (f"{len(jobs)} runs; test WER {baseline_wer:.4f} -> {wer['mean'][-1]:.4f} after {method.optim.epochs} "
            f"epochs (90% PI {wer['lower'][-1]:.4f} to {wer['upper'][-1]:.4f}) -> {RESULTS / 'convergence.json'}")


if __name__ == "__main__":
    run_stage("paper_convergence", main)
