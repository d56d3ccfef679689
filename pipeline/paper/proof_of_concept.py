"""The paper's proof of concept (section 4, Figure 2) on the three-Gaussian toy problem.

Only green -> blue costs (Table 2, tau = 1). A one-hidden-layer MLP is trained to
convergence with plain ERM, then fine-tuned twice from the same weights for the same
number of full-batch epochs: once with ERM (the control) and once with CSADA (Algorithm 2,
L-inf, eps 1.5, K 5, eta2 0.05). The comparison counts green -> blue test errors.

On Table 1 exactly the classes are ~5 standard deviations apart and a converged baseline
makes no green -> blue test errors (README, "What the toy problem shows"), so there the
measurable claim is the one of Fig. 2e/2f: after CSADA no green training point can be pushed to
blue within the attack budget. ``HARDER_MEANS`` moves green and blue closer so that the baseline does err.

Run ``python -m pipeline.paper.proof_of_concept --out figure2.png`` to draw Figure 2.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pipeline.datasets.toy import load_toy
from pipeline.method.attacks import AttackOutcome, AttackResult, targeted_attack
from pipeline.method.csada import CSADA
from pipeline.method.losses import ERM, TrainingMethod
from pipeline.models.networks import ToyMLP
from pipeline.reporting.figures import _pyplot
from pipeline.runs.train import train_epoch

GREEN, BLUE = 1, 2
HARDER_MEANS = {"green": (4.0, -6.0), "blue": (-4.0, -6.0)}


@dataclass(frozen=True)
class ToySettings:
    """Section 4's attack budget plus the optimisation recipe (full-batch Adam)."""

    eps: float = 1.5
    steps: int = 5
    step_size: float = 0.05
    adv_weight: float = 1.0
    temperature: float = 1.0
    baseline_epochs: int = 2000
    baseline_lr: float = 1e-2
    finetune_epochs: int = 300
    finetune_lr: float = 1e-3


@dataclass
class ToyRun:
    """Models and counts of one seed: the baseline and its two fine-tuned copies."""

    seed: int
    models: dict[str, nn.Module] = field(repr=False)
    green_to_blue: dict[str, int]
    accuracy: dict[str, float]
    train_accuracy: float


def green_to_blue_cost() -> Tensor:
    cost = torch.zeros(3, 3)
    cost[GREEN, BLUE] = 1.0
    return cost


def fit_full_batch(model: nn.Module, method: TrainingMethod, x: Tensor, y: Tensor, epochs: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        train_epoch(model, method, [(x, y)], optimizer)


@torch.no_grad()
def count_pair_errors(model: nn.Module, x: Tensor, y: Tensor, true_class: int, predicted_class: int) -> int:
    return int(((y == true_class) & (model(x).argmax(1) == predicted_class)).sum())


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def attack_green_to_blue(model: nn.Module, x: Tensor, y: Tensor, settings: ToySettings) -> AttackResult:
    """Algorithm 1 from every green point towards blue, with the section 4 budget."""
    green = x[y == GREEN]
    return targeted_attack(
        model, green, torch.full((len(green),), GREEN), BLUE,
        eps=settings.eps, steps=settings.steps, step_size=settings.step_size, record_trajectory=True,
    )


def run_seed(seed: int, settings: ToySettings = ToySettings(), means: dict | None = None) -> ToyRun:
    data = load_toy(seed=seed, means=means)
    train, test = data.split("train"), data.split("test")
    torch.manual_seed(seed)
    baseline = ToyMLP(in_features=2, num_classes=3, hidden=50)
    fit_full_batch(baseline, ERM(), train.x, train.y, settings.baseline_epochs, settings.baseline_lr)

    csada = CSADA(
        cost=green_to_blue_cost(), adv_weight=settings.adv_weight, temperature=settings.temperature,
        eps=settings.eps, steps=settings.steps, step_size=settings.step_size, pairs="full",
    )
    models = {"baseline": baseline}
    for name, method in (("erm", ERM()), ("csada", csada)):
        models[name] = copy.deepcopy(baseline)
        fit_full_batch(models[name], method, train.x, train.y, settings.finetune_epochs, settings.finetune_lr)
    return ToyRun(
        seed=seed,
        models=models,
        green_to_blue={k: count_pair_errors(m, test.x, test.y, GREEN, BLUE) for k, m in models.items()},
        accuracy={k: accuracy(m, test.x, test.y) for k, m in models.items()},
        train_accuracy=accuracy(baseline, train.x, train.y),
    )


def plot_figure2(run: ToyRun, path: str, settings: ToySettings = ToySettings(), means: dict | None = None) -> None:
    """Decision regions, test errors and attack trajectories before and after CSADA, as a PNG."""
    figure = draw_figure2(run, settings, means)
    figure.savefig(path, dpi=120, metadata={"Software": None})
    _pyplot().close(figure)


def draw_figure2(run: ToyRun, settings: ToySettings = ToySettings(), means: dict | None = None):
    """The figure of :func:`plot_figure2`; its legend sits below the panels, off the data."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D

    data = load_toy(seed=run.seed, means=means)
    train, test = data.split("train"), data.split("test")
    colours = ["tab:red", "tab:green", "tab:blue"]
    grid_x, grid_y = torch.meshgrid(torch.linspace(-14, 14, 300), torch.linspace(-13, 14, 300), indexing="xy")
    grid = torch.stack([grid_x.flatten(), grid_y.flatten()], 1)
    figure, axes = plt.subplots(1, 2, figsize=(12, 6.2), layout="constrained")
    for axis, key, title in ((axes[0], "baseline", "Baseline (before)"), (axes[1], "csada", "CSADA (after)")):
        model = run.models[key]
        with torch.no_grad():
            regions = model(grid).argmax(1).reshape(grid_x.shape)
        axis.contourf(grid_x, grid_y, regions, levels=[-0.5, 0.5, 1.5, 2.5], cmap=ListedColormap(colours), alpha=0.15)
        with torch.no_grad():
            wrong = model(test.x).argmax(1) != test.y
        axis.scatter(test.x[:, 0], test.x[:, 1], c=[colours[i] for i in test.y], s=4, alpha=0.25)
        axis.scatter(train.x[:, 0], train.x[:, 1], facecolors="none", edgecolors=[colours[i] for i in train.y], s=18)
        axis.scatter(test.x[wrong, 0], test.x[wrong, 1], marker="x", c=[colours[i] for i in test.y[wrong]], s=40)
        attack = attack_green_to_blue(model, train.x, train.y, settings)
        green = train.x[train.y == GREEN]
        for i in range(min(5, len(green))):
            path_i = green[i] + attack.trajectory[:, i]
            axis.plot(path_i[:, 0], path_i[:, 1], "-o", color="grey", ms=2, lw=0.8)
            axis.plot(*attack.x_adv[i], "ko", ms=3)
            box = plt.Rectangle(
                (green[i, 0] - settings.eps, green[i, 1] - settings.eps), 2 * settings.eps, 2 * settings.eps,
                fill=False, lw=0.5, color="black",
            )
            axis.add_patch(box)
        pushed = int((attack.outcome == AttackOutcome.SUCCEEDED).sum())
        axis.set_title(f"{title}: {run.green_to_blue[key]} green->blue test errors (crosses: all errors)\n"
                       f"{pushed} green training points pushed to blue within the budget", fontsize=10)
        axis.set_xlabel("feature x1")
        axis.set_ylabel("feature x2")
    legend = [Line2D([], [], marker="o", ls="", color=c, label=f"class {n} (filled: test, ring: training)")
              for c, n in zip(colours, ("red", "green", "blue"))]
    legend += [Line2D([], [], marker="x", ls="", color="black", label="test error"),
               Line2D([], [], marker="o", ms=2, color="grey", label="attack green -> blue (5 points; box: eps ball)")]
    # Below both panels: inside one it covered the errors and attack paths it explains.
    figure.legend(handles=legend, fontsize=8, ncols=3, loc="outside lower center")
    variant = "Table 1" if means is None else "green/blue moved inwards"
    figure.suptitle(f"Figure 2: the toy problem ({variant}, seed {run.seed}); only green -> blue costs", fontsize=11)
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Reproduce the paper's Figure 2 (section 4).")
    parser.add_argument("--out", default="figure2.png", help="PNG to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--harder", action="store_true", help="green and blue moved to (4, -6) and (-4, -6)")
    args = parser.parse_args(argv)
    means = HARDER_MEANS if args.harder else None
    run = run_seed(args.seed, means=means)
    plot_figure2(run, args.out, means=means)
    print(f"green->blue test errors {run.green_to_blue}; test accuracy {run.accuracy}; wrote {args.out}")


if __name__ == "__main__":
    main()
