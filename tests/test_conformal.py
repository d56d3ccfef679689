"""Conformal risk control of the cost of automated decisions (pipeline.predict.conformal): the
threshold by hand, and the guarantee itself, measured over many calibration draws."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.predict.conformal import ConformalError, abstention_curve, crc_threshold, decided, outcome

# Five calibration cases, by score: 0.1 (cost 0), 0.2 (0), 0.3 (0), 0.5 (1), 0.9 (2); B = 2, n = 5.
# Corrected risk (costs of the cases scored below t, plus B) / (n + 1) for each candidate t:
#   t <= 0.5: (0 + 2) / 6 = 0.333     t = 0.9: (1 + 2) / 6 = 0.5     t = inf: (3 + 2) / 6 = 0.833
LOSSES = np.array([0.0, 1.0, 0.0, 2.0, 0.0])
SCORES = np.array([0.1, 0.5, 0.2, 0.9, 0.3])


@pytest.mark.parametrize(("max_cost", "threshold"), [
    (0.4, 0.5),    # decide the cases scored below 0.5; the one at 0.5 (cost 1) would cross 0.4 (an
                   # uncorrected rule, mean cost of the decided <= 0.4, would take it: 1/5 = 0.2)
    (0.5, 0.9),    # exactly at the promise is allowed
    (0.84, None),  # deciding everything meets it: never abstain
    (0.3, 0.0),    # below B / (n + 1) = 0.333: nothing can be promised, every case to a person
])
def test_the_threshold_by_hand(max_cost, threshold):
    assert crc_threshold(LOSSES, SCORES, max_cost, bound=2.0) == threshold


def test_ties_are_decided_or_abstained_on_together():
    losses, scores = np.array([0.0, 3.0, 0.0]), np.array([0.2, 0.2, 0.1])
    # Candidates: 0.1 (nothing below: 3/4 = 0.75), 0.2 (the case at 0.1: 0.75), inf (both at 0.2 too: 1.5).
    assert crc_threshold(losses, scores, 0.8, bound=3.0) == 0.2
    assert decided(scores, 0.2).tolist() == [False, False, True]


def test_what_a_threshold_does_and_the_curve():
    result = outcome(LOSSES, SCORES, 0.5, bound=2.0)
    assert (result.n, result.abstention_rate, result.cost_per_case, result.cost_per_decided_case) == (5, 0.4, 0.0, 0.0)
    everything = outcome(LOSSES, SCORES, None, bound=2.0)
    assert (everything.abstention_rate, everything.cost_per_case) == (0.0, 0.6)
    assert outcome(LOSSES, SCORES, 0.0, bound=2.0).cost_per_decided_case is None
    rates, costs = abstention_curve(LOSSES, SCORES, bound=2.0)
    assert rates.tolist() == [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    assert costs.tolist() == [0.0, 0.0, 0.0, 0.0, 0.2, 0.6]


@pytest.mark.parametrize(("losses", "scores", "max_cost", "bound", "message"), [
    ([0.0, 3.0], [0.1, 0.2], 0.5, 2.0, r"every loss must lie in \[0, B\] with B = 2.0"),
    ([0.0, -1.0], [0.1, 0.2], 0.5, 2.0, r"every loss must lie in \[0, B\]"),
    ([0.0], [0.1, 0.2], 0.5, 2.0, r"of equal non-zero length"),
    ([0.0, 1.0], [0.1, np.nan], 0.5, 2.0, r"must be finite"),
    ([0.0, 1.0], [0.1, 0.2], 0.0, 2.0, r"max_cost must be a number > 0, got 0.0"),
])
def test_bad_calibration_data_fails_with_one_line(losses, scores, max_cost, bound, message):
    with pytest.raises(ConformalError, match=message):
        crc_threshold(np.array(losses), np.array(scores), max_cost, bound)


# The guarantee, measured. A population of cases whose class probabilities are known and which
# the model predicts exactly (a calibrated model), three classes and a cost matrix with B = 5.
# The model decides by the Bayes rule; a decided case's expected cost given its input is then its
# score, so the risk of a threshold t over the population is mean(score * [score < t]): exact, no
# test sampling noise. Each draw calibrates on n cases drawn from the population (labels drawn
# from the known probabilities); over DRAWS draws the mean risk of the chosen thresholds must be at
# most alpha, up to SLACK = 3 standard errors of that mean (the guarantee is in expectation over
# the calibration draw and the new case, Angelopoulos et al., arXiv 2208.02814).
COSTS = np.array([[0.0, 1.0, 5.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
DRAWS, POPULATION = 2000, 20000


@pytest.mark.parametrize(("n", "max_cost"), [(50, 0.2), (30, 0.3)])
def test_the_expected_cost_of_automated_decisions_stays_within_the_promise(n, max_cost):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([0.5] * 3, size=POPULATION)
    expected = probabilities @ COSTS
    decisions = expected.argmin(axis=1)
    scores = expected[np.arange(POPULATION), decisions]
    order = np.argsort(scores)
    risk_below = np.concatenate([[0.0], np.cumsum(scores[order])]) / POPULATION  # risk of deciding the lowest k

    def risk(threshold):
        return risk_below[-1] if threshold is None else risk_below[np.searchsorted(scores[order], threshold)]

    cases = rng.integers(0, POPULATION, size=(DRAWS, n))
    labels = (rng.random((DRAWS, n, 1)) > probabilities[cases].cumsum(axis=2)).sum(axis=2)
    losses = COSTS[labels, decisions[cases]]
    risks = np.array([risk(crc_threshold(losses[d], scores[cases[d]], max_cost, COSTS.max())) for d in range(DRAWS)])
    slack = 3 * risks.std(ddof=1) / np.sqrt(DRAWS)
    assert risks.mean() <= max_cost + slack, f"mean risk {risks.mean():.4f} > {max_cost} + {slack:.4f}"
    assert risk(None) > max_cost  # deciding everything would break the promise: abstention is needed ...
    assert risks.mean() > max_cost / 2  # ... and the procedure does not buy it by abstaining on nearly everything
