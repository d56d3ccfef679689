"""DVC stage 'paper_table' (paper/dvc.yaml): the methods compared on the data set's cost matrix
as in Tables 3 and 4 of section 5.2 (WER, top-k cost pair errors, accuracy; mean (sd)).

From the zero-loss baseline, each method of ``paper.table.methods`` (the paper: CSADA, AP, SOSR)
fine-tunes for ``paper.replications`` seeds with the paper's fixed settings and keeps its last
epoch: no search, no epoch chosen on validation (the product's pipeline does both). One Ray Tune
sweep. Writes results/table.json (every method under argmax, the decision the paper reports, and
the expected-cost rules for reference) and results/table.csv (every run).
"""

from pathlib import Path

import pandas as pd

from pipeline.cluster.distributed import run_jobs
from pipeline.config import Config
from pipeline.paper.experiments import costed_test, experiment_job, run_outcomes
from pipeline.reporting.evaluation import RunPredictions, metrics_summary, summarize_runs
from pipeline.paper.protocols import settings_record
from pipeline.reporting.outputs import write_csv, write_json
from pipeline.runs.plan import baseline_job
from pipeline.stage import run_stage

RESULTS = Path("results")


def main(config: Config) -> str:
    test = costed_test(config.dataset, config.paths.raw, config.paths.manifest, config.data.label_column,
                       config.paths.cost)
    baseline_dir, labels = test.baseline_dir, test.labels
    runs = [(variant.label, method, replication) for variant in config.paper.variants
            for method in config.paper.table_methods[variant.label] for replication in range(config.paper.replications)]
    jobs = [experiment_job(baseline_job(baseline_dir), baseline_dir, method, config.paths.cost,
                           name=f"{config.dataset}-table-{variant}-{method.name}-r{replication}",
                           seed=config.seed * 1000 + replication, replication=replication)
            for variant, method, replication in runs]
    stores = run_jobs(jobs, config.ray, Path.cwd(), experiment="paper_table")
    outcomes = run_outcomes(stores, [test.costs] * len(stores), test.data, test.loader)
    results = {"replications": config.paper.replications, "verdict_variant": config.paper.verdict.label,
               "variants": {}}
    rows = []
    for variant in config.paper.variants:
        predictions = [RunPredictions("baseline", None, test.baseline_logits, labels)] + [
            RunPredictions(method.name, replication, logits, labels)
            for (label, method, replication), (logits, _) in zip(runs, outcomes) if label == variant.label]
        evaluation = summarize_runs(predictions, test.cost, config.top_k)
        rows += [{"variant": variant.label, "method": method, "run": run, "rule": rule, **values}
                 for method, entry in evaluation.items() for run, rules in entry["runs"].items()
                 for rule, values in rules.items()]
        results["variants"][variant.label] = {
            "summary": metrics_summary(evaluation),
            "settings": {m.name: settings_record(m.optim, m.options) for m in config.paper.table_methods[variant.label]}}
    write_csv(pd.DataFrame(rows), RESULTS / "table.csv")
    write_json(results, RESULTS / "table.json")
    summary = results["variants"][config.paper.verdict.label]["summary"]
    wer = {m: summary[m]["argmax"]["wer"]["mean"] for m in summary}
    return (f"{len(jobs)} runs; {config.paper.verdict.label}, test WER under argmax: "
            + ", ".join(f"{m} {v:.4f}" for m, v in wer.items()) + f" -> {RESULTS / 'table.json'}")


if __name__ == "__main__":
    run_stage("paper_table", main)
