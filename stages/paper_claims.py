"""DVC stage 'paper_claims' (paper/dvc.yaml): results/paper.md, the paper's claims beside ours, and
results/metrics.json, the experiments' DVC metric (a few numbers per experiment).

Reads the experiments' outputs (results/toy.json, pairs.json, lambdas.json, convergence.json,
table.json, ablation.json) and the data set's split and cost matrix (for the setting and the Tables 3/4 layout);
pipeline.paper.claims decides each verdict by the rule it prints.
"""

import json
from pathlib import Path

from pipeline.config import Config
from pipeline.datasets.prepare import manifest_classes, read_manifest
from pipeline.method.costfiles import load_costs
from pipeline.paper.claims import headline
from pipeline.paper.page import render_claims
from pipeline.reporting.outputs import write_json
from pipeline.reporting.report import methods_table, write_report
from pipeline.stage import run_stage

RESULTS = Path("results")
DESCRIPTIONS = {"images": "images from data.source", "digits": "scikit-learn's 8x8 digits",
                "mnist": "MNIST", "cifar10": "CIFAR-10", "toy": "the three Gaussians of Table 1",
                "pmi": "the PMI pill images", "table": "your table (data.source)"}


def main(config: Config) -> str:
    outputs = {name: json.loads((RESULTS / f"{name}.json").read_text())
               for name in ("toy", "pairs", "lambdas", "convergence", "table", "ablation")}
    manifest = read_manifest(config.paths.manifest)
    counts = manifest["split"].value_counts().to_dict()
    source = f": {Path(config.data.source).name}" if config.data.source else ""
    setting = {"dataset": config.dataset, "description": DESCRIPTIONS.get(config.dataset, config.dataset) + source,
               "model": config.model, "classes": len(manifest_classes(manifest)),
               **{split: int(counts.get(split, 0)) for split in ("train", "val", "test")},
               "zero_loss": config.paper.zero_loss}
    verdict = config.paper.verdict.label
    summary = outputs["table"]["variants"][verdict]["summary"]
    methods = ["baseline", *[m.name for m in config.paper.table_methods[verdict]]]
    cost = load_costs(config.paths.cost)
    text = render_claims(setting, *outputs.values(), methods_table(summary, methods, "argmax", cost, config.top_k))
    write_report(text, RESULTS / "paper.md")
    write_json(headline(*outputs.values()), RESULTS / "metrics.json")
    verdicts = [line.split("| **")[1].split("**")[0] for line in text.splitlines() if "| **" in line]
    tally = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
    return f"{len(verdicts)} claims: {tally} -> {RESULTS / 'paper.md'}"


if __name__ == "__main__":
    run_stage("paper_claims", main)
