"""DVC stage 'costs': the cost matrix params.yaml asks for, over the data set's class names."""

from pipeline.config import Config
from pipeline.datasets.prepare import manifest_classes, read_manifest
from pipeline.method.costfiles import build_cost_matrix, save_costs
from pipeline.stage import run_stage


def main(config: Config) -> str:
    classes = manifest_classes(read_manifest(config.paths.manifest))
    cost = build_cost_matrix(config.costs, classes)
    config.paths.cost.parent.mkdir(parents=True, exist_ok=True)
    save_costs(cost, config.paths.cost)
    top = ", ".join(f"{a} -> {b}" for a, b in cost.top_pairs(min(3, len(classes) * (len(classes) - 1))))
    return f"{config.costs.kind} matrix over {len(classes)} classes in {config.paths.cost}; costliest: {top}"


if __name__ == "__main__":
    run_stage("costs", main)
