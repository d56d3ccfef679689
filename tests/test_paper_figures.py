"""The paper's figures (pipeline/paper/figures.py): legends off the curves, the pair heatmaps on
one colour scale with text that reads on its cell."""

import matplotlib
import numpy as np
import pytest

from pipeline.paper.figures import draw_convergence, draw_lambdas, draw_pair_heatmaps
from tests.figure_checks import assert_legends_clear_of_the_axes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def curve(mean, spread, n):
    mean = np.asarray(mean, dtype=float)
    return {"mean": mean.tolist(), "lower": (mean - spread).tolist(), "upper": (mean + spread).tolist(), "n": n}


def test_lambda_figure_legend_sits_beside_the_curve():
    # The interval is widest where the old legend sat (upper left and right): any legend inside covers it.
    figure = draw_lambdas([0, 1, 2, 5, 10], curve([0.145, 0.14, 0.14, 0.154, 0.169], 0.06, 3), 0.145, "lambdas")
    assert_legends_clear_of_the_axes(figure)


def test_convergence_figure_legend_sits_below_both_panels_and_names_each_series_once():
    figure = draw_convergence(curve(np.linspace(0.04, 0.01, 10), 0.01, 5),
                              curve(np.linspace(0.145, 0.135, 11), 0.02, 5), 0.145, "convergence")
    assert_legends_clear_of_the_axes(figure)
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert labels == ["90% prediction interval", "mean of 5 replications", "baseline (right)"]


def test_pair_heatmaps_share_one_scale_and_label_dark_cells_in_white():
    classes = ["o", "ki", "su"]
    baseline = np.array([[0, 0.05, 0.01], [0.0, 0, 0.02], [0.01, 0.0, 0]])
    after = np.full((3, 3), np.nan)
    after[0, 1], after[1, 2] = 0.0, 0.02
    figure = draw_pair_heatmaps([("baseline", baseline), ("CSADA", after)], classes, [(0, 1), (1, 2)], "pairs")
    images = [axis.images[0] for axis in figure.axes if axis.images]
    assert {image.get_clim() for image in images} == {(0.0, 5.0)}  # percent, the baseline's top on both
    colours = {(axis.get_title(), text.get_text()): text.get_color() for axis in figure.axes for text in axis.texts}
    # viridis: 5.0 is bright yellow (black text), 0.0 dark purple (white text).
    assert colours[("baseline", "5.0")] == "black" and colours[("CSADA", "0.0")] == "white"
