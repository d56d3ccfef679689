"""DVC stage 'paper_toy' (paper/dvc.yaml): the proof of concept of section 4 (Figure 2).

Table 1's three Gaussians exactly, and the harder variant with green and blue moved to (4, -6)
and (-4, -6) (where a converged baseline does make green -> blue errors), each for the seeds of
``SEEDS``: a converged MLP baseline, then the same number of full-batch epochs of plain ERM (the
control) and of CSADA (green -> blue cost 1, tau 1, L-inf eps 1.5, K 5, eta2 0.05) from it
(pipeline.paper.proof_of_concept). Counted: green -> blue test errors, test accuracy, and the green
training points Algorithm 1 can still push to blue within the budget. Writes results/toy.json and
results/figures/figure2.png, figure2_harder.png (seed 0: boundaries, errors, attack paths).
"""

import dataclasses
from pathlib import Path

from pipeline.config import Config
from pipeline.datasets.toy import load_toy
from pipeline.method.attacks import AttackOutcome
from pipeline.paper.proof_of_concept import (
    HARDER_MEANS,
    ToySettings,
    attack_green_to_blue,
    plot_figure2,
    run_seed,
)
from pipeline.reporting.outputs import write_json
from pipeline.stage import run_stage

RESULTS = Path("results")
SEEDS = tuple(range(8))  # every seed, not only those where the baseline errs
VARIANTS = {"table1": None, "harder": HARDER_MEANS}


def main(_: Config) -> str:
    """The toy problem is the paper's, whatever the data set: no params."""
    settings = ToySettings()
    record = {"seeds": list(SEEDS), "settings": dataclasses.asdict(settings)}
    (RESULTS / "figures").mkdir(parents=True, exist_ok=True)
    said = []
    for variant, means in VARIANTS.items():
        per_seed = []
        for seed in SEEDS:
            run = run_seed(seed, settings, means=means)
            train = load_toy(seed=seed, means=means).split("train")
            pushed = {name: int((attack_green_to_blue(run.models[name], train.x, train.y, settings).outcome
                                 == AttackOutcome.SUCCEEDED).sum()) for name in ("baseline", "erm", "csada")}
            per_seed.append({"seed": seed, "green_to_blue": run.green_to_blue, "accuracy": run.accuracy,
                             "pushed_to_blue": pushed, "train_accuracy": run.train_accuracy})
            if seed == SEEDS[0]:
                suffix = "" if means is None else "_harder"
                plot_figure2(run, str(RESULTS / "figures" / f"figure2{suffix}.png"), settings, means=means)
        models = ("baseline", "erm", "csada")
        totals = {name: sum(s["green_to_blue"][name] for s in per_seed) for name in models}
        pushed = {name: sum(s["pushed_to_blue"][name] for s in per_seed) for name in models}
        accuracy = {name: sum(s["accuracy"][name] for s in per_seed) / len(SEEDS) for name in models}
        record[variant] = {"seeds": per_seed, "green_to_blue": totals, "pushed_to_blue": pushed, "accuracy": accuracy}
        said.append(f"{variant}: green->blue test errors baseline {totals['baseline']}, ERM control {totals['erm']}, "
                    f"CSADA {totals['csada']}")
    write_json(record, RESULTS / "toy.json")
    return "; ".join(said) + f" over {len(SEEDS)} seeds -> {RESULTS / 'toy.json'}"


if __name__ == "__main__":
    run_stage("paper_toy", main)
