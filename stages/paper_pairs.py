"""DVC stage 'paper_pairs' (paper/dvc.yaml): the pair sweep of section 5.1 (Figures 1b, 3, 4) and
the over-parameterisation test of section 1.1, as one Ray Tune sweep.

The critical pairs are the ``paper.pairs.top`` ordered pairs (y', z') the zero-loss baseline
confuses most on validation (0: every ordered pair). For each pair, cost 1 on predicting y' as z'
and 0 elsewhere; every method of ``paper.pairs.methods`` fine-tunes each of the two baselines
(models/<dataset>/paper/baselines/) for ``paper.replications`` seeds, keeping its last epoch.
Scored on the test split: the critical pair's error rate (share of class y' predicted z') and
accuracy. Writes results/pairs.json (metrics: the share of the baselines' critical errors each
method removed, with a 90% confidence interval over replications), results/pairs.csv (every run)
and results/figures/pairs_<baseline>.png (the baseline's pairwise error rates beside each
method's critical-pair rates).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pipeline.cluster.distributed import run_jobs
from pipeline.config import Config
from pipeline.datasets.prepare import load_prepared
from pipeline.method.costfiles import load_costs
from pipeline.paper.experiments import (
    BASELINES,
    MAIN_BASELINE,
    baseline_fit,
    confused_pairs,
    critical_counts,
    experiment_job,
    pair_error_rates,
    pair_costs,
    paper_models,
    pair_run_name,
    removed_share,
    run_outcomes,
)
from pipeline.paper.figures import pair_heatmaps
from pipeline.paper.protocols import settings_record
from pipeline.reporting.evaluation import DISPLAY_NAMES
from pipeline.reporting.outputs import write_csv, write_json
from pipeline.runs.plan import baseline_job
from pipeline.runs.train import predict_logits, trained_model
from pipeline.stage import run_stage

RESULTS = Path("results")
LABELS = {"fit": "stopped at 100% training accuracy", "zero_loss": "trained to zero training loss"}


def run_rows(runs: list, predictions: list, test_y: torch.Tensor, classes: list[str],
             base_rates: dict[str, np.ndarray], base_accuracy: dict[str, float]) -> pd.DataFrame:
    """One row per run: its critical pair's test errors and rate beside the baseline's, and accuracy."""
    counts = torch.bincount(test_y, minlength=len(classes)).numpy()
    rows = []
    for (variant, base, pair, method, replication), (predicted, history) in zip(runs, predictions):
        errors = int(((predicted == pair[1]) & (test_y == pair[0])).sum())
        rows.append({"variant": variant, "baseline": base, "true": classes[pair[0]], "predicted": classes[pair[1]], "method": method.name,
                     "replication": replication, "class_count": int(counts[pair[0]]),
                     "baseline_errors": int(round(base_rates[base][pair] * counts[pair[0]])), "errors": errors,
                     "baseline_rate": float(base_rates[base][pair]), "rate": errors / int(counts[pair[0]]),
                     "baseline_accuracy": base_accuracy[base],
                     "accuracy": float((predicted == test_y).float().mean()), "epochs": len(history["history"])})
    return pd.DataFrame(rows)


def after_counts(runs: list, predictions: list, test_y: torch.Tensor) -> dict[tuple, torch.Tensor]:
    """(variant, baseline, method, replication) -> per test sample, the critical errors its runs
    made, each run charged only on its own pair."""
    counts: dict[tuple, torch.Tensor] = {}
    for (variant, base, pair, method, replication), (predicted, _) in zip(runs, predictions):
        key = (variant, base, method.name, replication)
        mine = critical_counts(predicted, test_y, [pair])
        counts[key] = counts[key] + mine if key in counts else mine
    return counts


def method_result(rows: pd.DataFrame, before: torch.Tensor, after: list[torch.Tensor], base_accuracy: float) -> dict:
    """One method from one baseline: the share of the critical errors it removed (per replication,
    summed over the pairs; bootstrap interval over test samples), its critical errors and accuracy."""
    return {"removed_share": removed_share(before, after),
            "critical_errors": float(np.mean([float(a.sum()) for a in after])),
            "test_accuracy": float(rows["accuracy"].mean()),
            "accuracy_change": float(rows["accuracy"].mean() - base_accuracy)}


def critical_rates(rows: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """K x K: each swept pair's mean test error rate after fine-tuning for it; NaN elsewhere."""
    matrix = np.full((len(classes), len(classes)), np.nan)
    for (true, predicted), group in rows.groupby(["true", "predicted"]):
        matrix[classes.index(true), classes.index(predicted)] = group["rate"].mean()
    return matrix


def pair_runs(config: Config, pairs: list[tuple[int, int]]) -> list[tuple]:
    """(variant, baseline, pair, method, replication) of every run: each variant from the
    zero-loss baseline; the verdict's variant also from the fit baseline (section 1.1's check).
    In the order they matter, so that a stage stopped early has trained the verdict's first."""
    bases = {variant.label: (MAIN_BASELINE, *[b for b in BASELINES if b != MAIN_BASELINE])
             if variant == config.paper.verdict else (MAIN_BASELINE,) for variant in config.paper.variants}
    return [(variant.label, base, pair, method, replication)
            for variant in config.paper.variants for base in bases[variant.label]
            for pair in pairs for method in config.paper.pair_methods[variant.label]
            for replication in range(config.paper.replications)]


def main(config: Config) -> str:
    baselines = paper_models(config.dataset) / "baselines"
    data = load_prepared(config.dataset, config.paths.raw, config.paths.manifest, augment=False,
                         label_column=config.data.label_column)
    k, classes = data.num_classes, list(data.classes)
    loaders = {split: DataLoader(data.split(split), batch_size=256, shuffle=False) for split in ("val", "test")}
    base_predictions = {name: {split: predict_logits(trained_model(baselines / name, data, None), loader)[0].argmax(1)
                               for split, loader in loaders.items()}
                        for name in BASELINES}
    pairs = confused_pairs(base_predictions[MAIN_BASELINE]["val"], data.split("val").y, k, config.paper.top_pairs)
    cost_files = pair_costs(pairs, classes, Path("runs") / "paper" / config.dataset / "pair_costs")
    runs = pair_runs(config, pairs)
    jobs = [experiment_job(baseline_job(baselines / base), baselines / base, method, cost_files[pair],
                           name=pair_run_name(config.dataset, variant, base, pair, method.name, replication),
                           seed=config.seed * 1000 + replication, replication=replication)
            for variant, base, pair, method, replication in runs]
    stores = run_jobs(jobs, config.ray, Path.cwd(), experiment="paper_pairs")

    test_y = data.split("test").y
    pair_cost = {pair: load_costs(path).as_tensor() for pair, path in cost_files.items()}
    costs = [pair_cost[pair] for _, _, pair, _, _ in runs]
    predictions = [(logits.argmax(1), history) for logits, history in run_outcomes(stores, costs, data, loaders["test"])]
    base_rates = {name: pair_error_rates(p["test"], test_y, k) for name, p in base_predictions.items()}
    base_accuracy = {name: float((p["test"] == test_y).float().mean()) for name, p in base_predictions.items()}
    table = run_rows(runs, predictions, test_y, classes, base_rates, base_accuracy)
    after = after_counts(runs, predictions, test_y)
    metrics = {"pairs": [[classes[y], classes[z]] for y, z in pairs], "replications": config.paper.replications,
               "verdict_variant": config.paper.verdict.label, "baselines": {}, "variants": {}}
    for base in BASELINES:
        history = json.loads((baselines / base / "history.json").read_text())["history"]
        metrics["baselines"][base] = {**baseline_fit(base, history[-1], config.paper.zero_loss),
                                      "test_accuracy": base_accuracy[base]}
    for variant in config.paper.variants:
        methods = config.paper.pair_methods[variant.label]
        entry = metrics["variants"][variant.label] = {
            "settings": {m.name: settings_record(m.optim, m.options) for m in methods}, "baselines": {}}
        for base in sorted(set(table[table["variant"] == variant.label]["baseline"])):
            part = table[(table["variant"] == variant.label) & (table["baseline"] == base)]
            before = critical_counts(base_predictions[base]["test"], test_y, pairs)
            groups = {m.name: part[part["method"] == m.name] for m in methods}
            entry["baselines"][base] = {
                "critical_errors": int(before.sum()),
                "methods": {name: method_result(rows, before, [after[(variant.label, base, name, r)]
                                                               for r in range(config.paper.replications)],
                                                base_accuracy[base]) for name, rows in groups.items()}}
            if variant != config.paper.verdict:
                continue
            panels = [(f"Baseline ({LABELS[base]})\nevery pair's test error rate", base_rates[base])]
            panels += [(f"{DISPLAY_NAMES.get(name, name)}: critical pair's rate\n"
                        f"after fine-tuning (mean of {config.paper.replications})", critical_rates(rows, classes))
                       for name, rows in groups.items()]
            pair_heatmaps(panels, classes, pairs,
                          f"Pair sweep on {config.dataset} ({config.model}), {variant.label}, from the baseline "
                          f"{LABELS[base]}", RESULTS / "figures" / f"pairs_{base}.png")
    write_csv(table, RESULTS / "pairs.csv")
    write_json(metrics, RESULTS / "pairs.json")
    verdict = metrics["variants"][config.paper.verdict.label]["baselines"][MAIN_BASELINE]["methods"]
    shares = ", ".join(f"{m} {v['removed_share']['mean']:.0%}" for m, v in verdict.items()
                       if v["removed_share"]["mean"] is not None)
    return (f"{len(jobs)} runs ({len(pairs)} pairs, {len(config.paper.variants)} variants); critical errors removed "
            f"from the zero-loss baseline ({config.paper.verdict.label}): {shares or 'none to remove'} "
            f"-> {RESULTS / 'pairs.json'}")


if __name__ == "__main__":
    run_stage("paper_pairs", main)
