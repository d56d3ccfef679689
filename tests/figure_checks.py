"""What every figure must show honestly, checked on the matplotlib Figure a ``draw_*`` returns.

Shared by tests/test_figures.py, tests/test_paper_figures.py and tests/test_proof_of_concept.py.
"""

from __future__ import annotations

from typing import Any


def assert_legends_clear_of_the_axes(figure: Any) -> None:
    """The figure has a legend, and no legend's box overlaps any axes' data area (it sits beside
    or below them), so it can hide no bar, line or point, nor any title."""
    figure.canvas.draw()  # lays the figure out (constrained layout, outside legends) as it is saved
    renderer = figure.canvas.get_renderer()
    legends = list(figure.legends) + [axis.get_legend() for axis in figure.axes if axis.get_legend() is not None]
    assert legends, "the figure has no legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for axis in figure.axes:
            area = axis.get_window_extent(renderer)
            assert not box.overlaps(area), f"legend {box.bounds} covers the axes '{axis.get_title()}' {area.bounds}"
        titles = [axis.title for axis in figure.axes] + list(figure.texts)  # figure.texts holds the suptitle
        for title in titles:
            if title.get_text():
                assert not box.overlaps(title.get_window_extent(renderer)), f"legend covers '{title.get_text()}'"
