"""Section 4 / Figure 2: CSADA removes green -> blue errors that plain fine-tuning keeps.

How the claim is tested (docs/paper.md, "What the toy problem shows"): on Table 1 exactly, a converged
baseline makes no green -> blue test errors, so there we check Fig. 2e/2f (no green training point
can be pushed to blue within the budget after CSADA) and that accuracy does not drop; the
error reduction is measured on the harder variant with green and blue moved inwards.
"""

import numpy as np
import pytest
import torch

from pipeline.datasets.toy import load_toy
from pipeline.method.attacks import AttackOutcome
from pipeline.models.networks import ToyMLP
from pipeline.paper.proof_of_concept import (
    HARDER_MEANS,
    ToyRun,
    ToySettings,
    attack_green_to_blue,
    draw_figure2,
    run_seed,
)
from tests.figure_checks import assert_legends_clear_of_the_axes

# The seeds of 0..15 on which the converged harder-variant baseline makes at least one
# green -> blue test error. They were picked from the baseline's errors alone (before any
# fine-tuning), so the selection cannot favour CSADA over the ERM control.
SEEDS_WITH_BASELINE_ERRORS = (0, 2, 5, 9, 11, 14, 15)


@pytest.fixture(autouse=True)
def one_thread():
    # A 50-unit MLP is fastest on one thread, and one thread fixes the reduction order.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_table_1_after_csada_no_green_training_point_can_be_pushed_to_blue():
    settings = ToySettings()
    run = run_seed(0, settings)
    train = load_toy(seed=0).split("train")
    assert run.train_accuracy == 1.0
    attack = attack_green_to_blue(run.models["csada"], train.x, train.y, settings)
    assert int((attack.outcome == AttackOutcome.SUCCEEDED).sum()) == 0
    assert bool((attack.delta.abs().amax(dim=1) > 0).all())  # the points did move (Fig. 2e)
    assert float(attack.delta.abs().max()) <= settings.eps + 1e-6
    assert run.accuracy["csada"] >= run.accuracy["baseline"]


def test_harder_variant_csada_removes_the_critical_errors_that_erm_keeps():
    runs = [run_seed(seed, ToySettings(), HARDER_MEANS) for seed in SEEDS_WITH_BASELINE_ERRORS]
    errors = {key: sum(run.green_to_blue[key] for run in runs) for key in ("baseline", "erm", "csada")}
    assert all(run.train_accuracy == 1.0 for run in runs)
    assert errors["baseline"] >= 5
    assert errors["csada"] <= 0.2 * errors["baseline"], errors
    assert errors["erm"] >= 0.5 * errors["baseline"], errors  # the control keeps most of them
    drop = np.mean([run.accuracy["baseline"] - run.accuracy["csada"] for run in runs])
    assert drop <= 0.01, f"mean test accuracy fell by {drop:.4f}"


def test_figure_2_legend_sits_below_the_panels():
    # The layout, not the training: two untrained networks stand in for the baseline and CSADA.
    torch.manual_seed(0)
    models = {name: ToyMLP(in_features=2, num_classes=3, hidden=50) for name in ("baseline", "csada")}
    run = ToyRun(seed=0, models=models, green_to_blue={"baseline": 1, "csada": 0}, accuracy={}, train_accuracy=1.0)
    figure = draw_figure2(run, ToySettings(), HARDER_MEANS)
    try:
        assert_legends_clear_of_the_axes(figure)
    finally:
        import matplotlib.pyplot as plt  # loaded by draw_figure2, with its Agg backend

        plt.close(figure)
