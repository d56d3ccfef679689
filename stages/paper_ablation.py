"""DVC stage 'paper_ablation' (paper/dvc.yaml): what moves CSADA, one factor at a time.

From the zero-loss baseline, on each of the ``paper.ablation.pairs`` pairs it confuses most on
validation (cost 1 on that pair only) and for ``paper.ablation.seeds`` seeds, CSADA under the
authors' pair-sweep protocol at the first variant's learning-rate scale ("authors": the pair
sweep's own runs, reused), then with one factor changed: Adam for their SGD, sign steps for the
raw gradient, BatchNorm in train mode for frozen, the unbiased normalisation for the mean over
the attacked class; and ERM with the same optimiser, the control that shows what fine-tuning
alone does. On the data set's own (Pareto) costs: tau 3 against tau 1, and the error-aware pair
weights (beyond the paper), beside the same ERM control.

Per arm: the share of the baseline's critical errors removed (on the Pareto costs: the share of
its total test cost; 90% bootstrap interval over test samples), the accuracy change, and where the accuracy went: the change in errors on the
samples of the pair's predicted class z against the change on every other class. Per run and
epoch, what the attack did (results/attack.csv: the share of attacked samples that reached z,
were rejected, were skipped). Writes results/ablation.json, results/ablation.csv and
results/figures/ablation.png.
"""

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from pipeline.cluster.distributed import run_jobs
from pipeline.config import Config
from pipeline.datasets.prepare import load_prepared
from pipeline.method.costfiles import load_costs
from pipeline.paper.experiments import (
    MAIN_BASELINE,
    attack_epochs,
    attack_shares,
    confused_pairs,
    critical_counts,
    experiment_job,
    pair_costs,
    pair_run_name,
    paper_models,
    removed_share,
    run_outcomes,
)
from pipeline.paper.figures import ablation_figure
from pipeline.paper.protocols import settings_record
from pipeline.reporting.outputs import write_csv, write_json
from pipeline.runs.plan import baseline_job
from pipeline.runs.train import predict_logits, trained_model
from pipeline.stage import run_stage

RESULTS = Path("results")


def run_name(config: Config, arm: str, pair: tuple[int, int] | None, method: str, seed: int) -> str:
    """The "authors" arm is named as the pair sweep names its runs, so both use one training."""
    if pair is None:
        return f"{config.dataset}-ablation-costs-{arm}-r{seed}"
    variant = config.paper.verdict.label if arm == "authors" else f"ablation-{arm}"
    return pair_run_name(config.dataset, variant, MAIN_BASELINE, pair, method, seed)


def where_accuracy_went(base: torch.Tensor, tuned: torch.Tensor, labels: torch.Tensor, target: int) -> dict:
    """Change in errors on the samples of class ``target`` (the pair's predicted class) and on
    every other class, and in accuracy (all per test sample)."""
    wrong_before, wrong_after = base != labels, tuned != labels
    on_target = labels == target
    return {"errors_on_z": int(wrong_after[on_target].sum() - wrong_before[on_target].sum()),
            "errors_elsewhere": int(wrong_after[~on_target].sum() - wrong_before[~on_target].sum()),
            "accuracy_change": float((~wrong_after).float().mean() - (~wrong_before).float().mean())}


def main(config: Config) -> str:
    ablation = config.paper.ablation
    baseline_dir = paper_models(config.dataset) / "baselines" / MAIN_BASELINE
    data = load_prepared(config.dataset, config.paths.raw, config.paths.manifest, augment=False,
                         label_column=config.data.label_column)
    loaders = {split: DataLoader(data.split(split), batch_size=256, shuffle=False) for split in ("val", "test")}
    base = {split: predict_logits(trained_model(baseline_dir, data, None), loader)[0].argmax(1)
            for split, loader in loaders.items()}
    pairs = confused_pairs(base["val"], data.split("val").y, data.num_classes, ablation.pairs)
    cost_files = pair_costs(pairs, list(data.classes), Path("runs") / "paper" / config.dataset / "pair_costs")
    seeds = range(ablation.seeds)
    runs = [(arm, pair, method, seed) for arm, method in ablation.pair_arms.items() for pair in pairs for seed in seeds]
    runs += [(arm, None, method, seed) for arm, method in ablation.cost_arms.items() for seed in seeds]
    jobs = [experiment_job(baseline_job(baseline_dir), baseline_dir, method,
                           cost_files[pair] if pair else config.paths.cost, name=run_name(config, arm, pair, method.name, seed),
                           seed=config.seed * 1000 + seed, replication=seed)
            for arm, pair, method, seed in runs]
    stores = run_jobs(jobs, config.ray, Path.cwd(), experiment="paper_ablation")
    costs = [load_costs(cost_files[pair] if pair else config.paths.cost).as_tensor() for _, pair, _, _ in runs]
    outcomes = run_outcomes(stores, costs, data, loaders["test"])

    labels = data.split("test").y
    dataset_costs = load_costs(config.paths.cost).as_tensor()
    rows = []
    for (arm, pair, method, seed), (logits, history) in zip(runs, outcomes):
        tuned = logits.argmax(1)
        critical = pairs if pair is None else [pair]
        rows.append({"arm": arm, "costs": "pareto" if pair is None else "pair", "method": method.name,
                     "true": None if pair is None else data.classes[pair[0]],
                     "predicted": None if pair is None else data.classes[pair[1]], "seed": seed,
                     "critical_errors": int(critical_counts(tuned, labels, critical).sum()),
                     "baseline_critical_errors": int(critical_counts(base["test"], labels, critical).sum()),
                     "wer": float(dataset_costs[labels, tuned].mean()),
                     **(where_accuracy_went(base["test"], tuned, labels, pair[1]) if pair else
                        {"accuracy_change": float((tuned == labels).float().mean() - (base["test"] == labels).float().mean())}),
                     **attack_shares(history["history"])})
    table = pd.DataFrame(rows)
    results = {"pairs": [[data.classes[y], data.classes[z]] for y, z in pairs], "seeds": ablation.seeds,
               "baseline_wer": float(dataset_costs[labels, base["test"]].mean()),
               "lr_scale": config.paper.verdict.lr_scale, "arms": {}}
    for arm_set, costs_kind in ((ablation.pair_arms, "pair"), (ablation.cost_arms, "pareto")):
        for arm, method in arm_set.items():
            mine = [(pair, seed, logits.argmax(1)) for (a, pair, _, seed), (logits, _) in zip(runs, outcomes)
                    if a == arm and (pair is None) == (costs_kind == "pareto")]
            if costs_kind == "pair":  # the critical errors: each run's own pair
                before = critical_counts(base["test"], labels, pairs).to(torch.float64)
                after = [sum((critical_counts(p, labels, [pair]) for pair, s, p in mine if s == seed),
                             torch.zeros(len(labels), dtype=torch.long)) for seed in seeds]
            else:  # on the Pareto costs: the share of the baseline's total test cost removed
                before = dataset_costs[labels, base["test"]].double()
                after = [dataset_costs[labels, p].double() for _, _, p in mine]
            part = table[(table["arm"] == arm) & (table["costs"] == costs_kind)]
            results["arms"][f"{costs_kind}/{arm}"] = {
                "costs": costs_kind, "removed_share": removed_share(before, after),
                "accuracy_change": float(part["accuracy_change"].mean()), "wer": float(part["wer"].mean()),
                **({"errors_on_z": float(part["errors_on_z"].mean()),
                    "errors_elsewhere": float(part["errors_elsewhere"].mean())} if costs_kind == "pair" else {}),
                "attack": {k: float(part[k].mean()) for k in ("reached_z", "rejected", "skipped")
                           if k in part and part[k].notna().any()},
                "settings": settings_record(method.optim, method.options)}
    write_csv(table, RESULTS / "ablation.csv")
    write_csv(pd.DataFrame([{"arm": arm, "costs": "pareto" if pair is None else "pair", "seed": seed,
                             "true": None if pair is None else data.classes[pair[0]],
                             "predicted": None if pair is None else data.classes[pair[1]], **epoch}
                            for (arm, pair, _, seed), (_, history) in zip(runs, outcomes)
                            for epoch in attack_epochs(history["history"])]), RESULTS / "attack.csv")
    write_json(results, RESULTS / "ablation.json")
    ablation_figure(results, f"What moves CSADA on {config.dataset} ({config.model}): one factor at a time, "
                    f"{ablation.seeds} seeds", RESULTS / "figures" / "ablation.png")
    shares = ", ".join(f"{arm} {entry['removed_share']['mean']:.0%}" for arm, entry in results["arms"].items()
                       if entry["removed_share"]["mean"] is not None)
    return f"{len(jobs)} runs; critical errors removed: {shares} -> {RESULTS / 'ablation.json'}"


if __name__ == "__main__":
    run_stage("paper_ablation", main)
