import pytest
import torch

from pipeline.method.costs import CostMatrix
from pipeline.method.decision import (
    DECISION_RULES,
    DecisionError,
    argmax_decision,
    decide,
    expected_cost_decision,
    expected_costs,
)

COST = torch.tensor([[0.0, 1.0, 4.0], [2.0, 0.0, 1.0], [5.0, 3.0, 0.0]])


def test_argmax_decision_and_ties():
    scores = torch.tensor([[0.1, 0.7, 0.2], [3.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    pred = argmax_decision(scores)
    assert pred.dtype == torch.long
    assert pred.tolist() == [1, 0, 0]


def test_expected_cost_differs_from_argmax_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    # E[cost | predict a] = 0.3*2 + 0.2*5 = 1.6
    # E[cost | predict b] = 0.5*1 + 0.2*3 = 1.1  <- smallest
    # E[cost | predict c] = 0.5*4 + 0.3*1 = 2.3
    torch.testing.assert_close(expected_costs(probs, COST), torch.tensor([[1.6, 1.1, 2.3]]))
    assert expected_cost_decision(probs, COST).tolist() == [1]
    assert argmax_decision(probs).tolist() == [0]


def test_expected_cost_binary_hand_example():
    # Missing class 1 costs 10, missing class 0 costs 1: predict 1 once p(1) > 1/11.
    cost = torch.tensor([[0.0, 1.0], [10.0, 0.0]])
    probs = torch.tensor([[0.6, 0.4], [0.95, 0.05]])
    # Row 0: [0.4*10, 0.6*1] = [4.0, 0.6] -> 1.  Row 1: [0.5, 0.95] -> 0.
    assert expected_cost_decision(probs, cost).tolist() == [1, 0]


def test_expected_cost_ties_go_to_lowest_index():
    unit = torch.ones(3, 3) - torch.eye(3)
    probs = torch.tensor([[0.0, 0.5, 0.5], [0.25, 0.25, 0.5], [0.5, 0.0, 0.5]])
    # Expected costs 1 - p: [1, .5, .5], [.75, .75, .5], [.5, 1, .5].
    assert expected_cost_decision(probs, unit).tolist() == [1, 2, 0]


def test_unit_costs_reduce_to_argmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=gen)
    unit = torch.ones(5, 5) - torch.eye(5)
    assert torch.equal(decide("expected_cost", logits, unit), decide("argmax", logits, unit))


def test_decide_with_cost_matrix_and_half_logits():
    cm = CostMatrix(["a", "b", "c"], COST.numpy())
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    expected = torch.tensor([1, 2])
    assert torch.equal(decide("expected_cost", logits, cm), expected)
    assert torch.equal(decide("expected_cost", logits.half(), COST.double()), expected)
    assert torch.equal(decide("argmax", logits, cm), torch.tensor([0, 2]))


def test_cost_dtype_and_device_follow_probs():
    probs = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    assert expected_costs(probs, COST).dtype == torch.float64


@pytest.mark.parametrize(
    "probs, cost, message",
    [
        (torch.ones(2, 3) / 3, torch.ones(2, 2), "3 x 3 matrix to match 3 classes"),
        (torch.ones(3) / 3, COST, "2-D tensor"),
        (torch.ones(2, 3, dtype=torch.long), COST, "floating-point"),
        ([[0.5, 0.5]], torch.ones(2, 2), "2-D tensor"),
    ],
)
def test_shape_errors(probs, cost, message):
    with pytest.raises(DecisionError) as info:
        expected_cost_decision(probs, cost)
    assert message in str(info.value)


def test_unknown_rule_lists_known_ones():
    assert set(DECISION_RULES) == {"argmax", "expected_cost", "calibrated_expected_cost"}
    with pytest.raises(DecisionError, match="unknown decision rule 'bayes'; known: argmax, calibrated_expected_cost, expected_cost"):
        decide("bayes", torch.zeros(1, 3), COST)
