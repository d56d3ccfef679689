"""Temperature scaling and the calibrated expected-cost rule."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.method.calibration import (
    T_MAX,
    T_MIN,
    CalibrationError,
    fit_temperature,
    temperature_nll,
)
from pipeline.method.decision import DecisionError, decide


def _overconfident(n: int = 4000, true_temperature: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z), reported as logits 3 z: a model over-confident by T = 3."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=generator).squeeze(1)
    return z * true_temperature, labels


def test_fit_recovers_the_temperature_that_generated_the_labels():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    # It is the minimum of the NLL: a little either side is worse.
    assert temperature_nll(logits, labels, t) < temperature_nll(logits, labels, t * 1.1)
    assert temperature_nll(logits, labels, t) < temperature_nll(logits, labels, t / 1.1)


def test_fit_is_deterministic_and_stays_in_range():
    logits, labels = _overconfident(seed=1)
    assert fit_temperature(logits, labels) == fit_temperature(logits.clone(), labels.clone())
    # Perfectly separated, correct logits: sharper is better until the NLL is 0 in float64.
    sure = F.one_hot(torch.arange(6) % 3, 3).float() * 5
    assert T_MIN <= fit_temperature(sure, torch.arange(6) % 3) < 0.2
    # Logits that are always wrong: the flatter the better.
    assert fit_temperature(sure, (torch.arange(6) + 1) % 3) == pytest.approx(T_MAX, rel=1e-3)


def test_the_calibrated_rule_divides_the_logits_by_the_temperature():
    cost = torch.tensor([[0.0, 1.0], [10.0, 0.0]])
    logits = torch.tensor([[2.0, 0.0]])  # p(0) = 0.88: expected costs [1.19, 0.88] -> predict 1
    assert decide("expected_cost", logits, cost).tolist() == [1]
    assert decide("calibrated_expected_cost", logits, cost, temperature=1.0).tolist() == [1]
    # T = 0.25 sharpens to p(0) = 0.9997: [0.003, 0.9997] -> predict 0.
    assert decide("calibrated_expected_cost", logits, cost, temperature=0.25).tolist() == [0]
    assert decide("expected_cost", logits, cost, temperature=0.25).tolist() == [1]  # the raw rule ignores T
    assert decide("argmax", logits * 100, cost, temperature=0.25).tolist() == [0]


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_temperature_fails_by_name(temperature):
    with pytest.raises(DecisionError, match="temperature must be a finite number > 0"):
        decide("calibrated_expected_cost", torch.zeros(1, 2), torch.ones(2, 2), temperature=temperature)


def test_bad_logits_fail_clearly():
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        fit_temperature(torch.tensor([[math.nan, 0.0]]), torch.tensor([0]))
    with pytest.raises(CalibrationError, match="labels must be"):
        fit_temperature(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
