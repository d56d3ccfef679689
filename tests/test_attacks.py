"""Algorithm 1 checked against answers worked out by hand on linear models."""

import pytest
import torch
from torch import nn

from pipeline.method.attacks import (
    AttackOutcome,
    L2Ball,
    LinfBall,
    frozen_for_attack,
    targeted_attack,
)


def linear_model(weight, bias) -> nn.Linear:
    layer = nn.Linear(2, len(bias))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


# logits = (0, x1 - 0.25, x2 - 5). Ascending log p_1 has gradient (1 - p_1, -p_2): the sign
# step moves (+0.1, -0.1) each time, and class 1 overtakes class 0 once x1 > 0.25, i.e.
# after exactly 3 steps of 0.1.
REACHES_TARGET = dict(weight=[[0, 0], [1, 0], [0, 1]], bias=[0, -0.25, -5])
# logits = (0, x1 - 1, 2 x1 - 0.5). Ascending log p_1 pushes x1 up (gradient
# 1 - p_1 - 2 p_2 > 0 for x1 <= 0.2), but class 2 overtakes class 0 at x1 > 0.25, before
# class 1 does (x1 > 1): the third step (x1 = 0.3) leaves {0, 1} and is rejected.
LEAVES_PAIR = dict(weight=[[0, 0], [1, 0], [2, 0]], bias=[0, -1, -0.5])

SIGN_STEPS = dict(step_size=0.1, norm="linf", step_rule="steepest")


def attack_one(model, x, y, z, **kwargs):
    return targeted_attack(model, torch.tensor([x]), torch.tensor([y]), torch.tensor([z]), **kwargs)


def test_success_stops_at_the_step_that_reaches_the_target():
    result = attack_one(linear_model(**REACHES_TARGET), [0.0, 0.0], 0, 1, eps=1.0, steps=10, **SIGN_STEPS)
    assert result.outcome.tolist() == [AttackOutcome.SUCCEEDED]
    torch.testing.assert_close(result.delta, torch.tensor([[0.3, -0.3]]))
    assert result.steps_taken.tolist() == [3]
    # steps 0..3 were evaluated: 4 forwards, 3 backwards (the check of step k is the forward of step k+1)
    assert (result.n_forward, result.n_backward) == (4, 3)


def test_a_step_that_leaves_the_pair_is_rejected_and_the_previous_iterate_returned():
    result = attack_one(linear_model(**LEAVES_PAIR), [0.0, 0.0], 0, 1, eps=1.0, steps=10, **SIGN_STEPS)
    assert result.outcome.tolist() == [AttackOutcome.REJECTED]
    torch.testing.assert_close(result.delta, torch.tensor([[0.2, 0.0]]))
    assert result.steps_taken.tolist() == [2]


def test_misclassified_samples_are_skipped_unmoved():
    # at (0, 6) class 2 wins (logit 1 > 0): the model is wrong about y = 0, so no step is taken
    result = attack_one(linear_model(**REACHES_TARGET), [0.0, 6.0], 0, 1, eps=1.0, steps=10, **SIGN_STEPS)
    assert result.outcome.tolist() == [AttackOutcome.SKIPPED]
    assert torch.equal(result.x_adv, torch.tensor([[0.0, 6.0]]))
    assert (result.n_forward, result.n_backward) == (1, 0)


def test_exhausted_after_k_steps_returns_the_last_iterate():
    result = attack_one(linear_model(**REACHES_TARGET), [0.0, 0.0], 0, 1, eps=1.0, steps=2, **SIGN_STEPS)
    assert result.outcome.tolist() == [AttackOutcome.EXHAUSTED]
    torch.testing.assert_close(result.delta, torch.tensor([[0.2, -0.2]]))
    assert (result.n_forward, result.n_backward) == (3, 2)


def test_linf_projection_holds_the_iterate_on_the_ball():
    result = attack_one(linear_model(**REACHES_TARGET), [0.0, 0.0], 0, 1, eps=0.15, steps=5, **SIGN_STEPS)
    assert result.outcome.tolist() == [AttackOutcome.EXHAUSTED]
    torch.testing.assert_close(result.delta, torch.tensor([[0.15, -0.15]]))


def test_l2_steepest_steps_and_projection():
    # w_1 - p.W is (1 - p_1, -p_2) with p_2 ~ e^-5 / 2: the unit step is almost exactly +e1.
    model = linear_model(**REACHES_TARGET)
    result = attack_one(model, [0.0, 0.0], 0, 1, eps=0.25, steps=5, step_size=0.1, norm="l2", step_rule="steepest")
    assert result.outcome.tolist() == [AttackOutcome.EXHAUSTED]  # the ball (0.25) stops it before 0.25 is passed
    assert result.delta.norm().item() == pytest.approx(0.25, abs=1e-6)
    assert result.delta[0, 0].item() == pytest.approx(0.25, abs=1e-2)


def test_raw_gradient_step_is_eta_times_grad_log_pz():
    model = linear_model(weight=[[1.0, -2.0], [0.5, 1.0], [-1.0, 0.0]], bias=[1.0, 0.0, -1.0])
    x = torch.tensor([[0.3, -0.2]])
    p = torch.softmax(model(x), dim=1)[0].detach()
    grad = model.weight[1].detach() - p @ model.weight.detach()  # d/dx log p_1 for a linear softmax model
    result = attack_one(model, x[0].tolist(), 0, 1, eps=10.0, steps=1, step_size=0.05, step_rule="gradient")
    torch.testing.assert_close(result.delta[0], 0.05 * grad)


def test_projection_geometry():
    delta = torch.tensor([[3.0, -4.0], [0.1, 0.2]])
    torch.testing.assert_close(LinfBall.project(delta, 1.0), torch.tensor([[1.0, -1.0], [0.1, 0.2]]))
    torch.testing.assert_close(L2Ball.project(delta, 1.0), torch.tensor([[0.6, -0.8], [0.1, 0.2]]))
    torch.testing.assert_close(L2Ball.steepest(delta)[0], torch.tensor([0.6, -0.8]))


def test_clamp_keeps_inputs_in_range():
    result = attack_one(
        linear_model(**REACHES_TARGET), [0.0, 0.0], 0, 1, eps=1.0, steps=10, clamp=(-0.05, 1.0), **SIGN_STEPS
    )
    assert result.x_adv[0, 1].item() == pytest.approx(-0.05)
    assert result.outcome.tolist() == [AttackOutcome.SUCCEEDED]


def test_a_batch_mixes_every_outcome_with_per_sample_targets():
    model = linear_model(**REACHES_TARGET)
    x = torch.tensor([[0.0, 0.0], [0.0, 6.0], [0.2, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0, 0, 0])
    target = torch.tensor([1, 1, 1, 2])
    result = targeted_attack(model, x, y, target, eps=1.0, steps=4, **SIGN_STEPS)
    assert result.outcome.tolist() == [
        AttackOutcome.SUCCEEDED,  # three steps, as above
        AttackOutcome.SKIPPED,  # misclassified
        AttackOutcome.SUCCEEDED,  # starts at 0.2: one step reaches 0.3 > 0.25
        AttackOutcome.EXHAUSTED,  # towards class 2: x2 rises 0.1 a step, needs x2 > 5
    ]
    assert result.steps_taken.tolist() == [3, 0, 1, 4]
    assert (result.n_forward, result.n_backward) == (5, 4)  # bounded by K + 1 and K, not per sample


def test_batched_attack_equals_one_sample_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 4))
    x = torch.randn(12, 2) * 2
    y = model(x).argmax(1)
    target = (y + 1 + torch.arange(12) % 3) % 4
    kwargs = dict(eps=0.5, steps=6, step_size=0.2, step_rule="gradient")
    batched = targeted_attack(model, x, y, target, **kwargs)
    for i in range(12):
        single = targeted_attack(model, x[i : i + 1], y[i : i + 1], target[i : i + 1], **kwargs)
        torch.testing.assert_close(batched.x_adv[i : i + 1], single.x_adv)
        assert batched.outcome[i] == single.outcome[0]
    assert len(set(batched.outcome.tolist())) >= 2


class _Flaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
        self.calls = 0
        self.fail_on = None

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return self.body(x)


def _state(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def test_attack_leaves_the_model_as_it_found_it():
    torch.manual_seed(0)
    model = _Flaky()
    model.train()
    model.body[1].eval()  # a mixed-mode model: one frozen BatchNorm
    model.body[0].bias.requires_grad_(False)
    before = _state(model)
    x = torch.randn(16, 2)
    targeted_attack(model, x, torch.zeros(16, dtype=torch.long), 1, eps=1.0, steps=3, step_size=0.1)
    after = _state(model)
    assert before[0] == after[0] and before[1] == after[1]
    for key in before[2]:
        assert torch.equal(before[2][key], after[2][key]), key


def test_flags_are_restored_even_when_the_model_raises():
    torch.manual_seed(0)
    model = _Flaky()
    x = torch.randn(4, 2)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # every sample correctly classified: the attack takes a step
    model.train()
    model.calls, model.fail_on = 0, 2  # the forward of the first step raises
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        targeted_attack(model, x, y, (y + 1) % 3, eps=1.0, steps=3, step_size=1.0)
    assert _state(model)[:2] == before[:2]


def test_frozen_for_attack_switches_to_eval_without_parameter_gradients():
    model = _Flaky().train()
    with frozen_for_attack(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_trajectory_records_each_accepted_iterate():
    result = attack_one(
        linear_model(**REACHES_TARGET), [0.0, 0.0], 0, 1, eps=1.0, steps=5, record_trajectory=True, **SIGN_STEPS
    )
    path = result.trajectory[:, 0, 0]
    torch.testing.assert_close(path, torch.tensor([0.0, 0.1, 0.2, 0.3, 0.3, 0.3]))


def test_counts_by_outcome():
    model = linear_model(**REACHES_TARGET)
    x = torch.tensor([[0.0, 0.0], [0.0, 6.0]])
    result = targeted_attack(model, x, torch.tensor([0, 0]), 1, eps=1.0, steps=5, **SIGN_STEPS)
    assert result.counts() == {"skipped": 1, "succeeded": 1, "rejected": 0, "exhausted": 0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(eps=0.0), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(steps=0), "steps"),
        (dict(step_size=-1.0), "step_size"),
        (dict(norm="l1"), "unknown norm 'l1'; known: l2, linf"),
        (dict(step_rule="adam"), "step_rule"),
        (dict(clamp=(1.0, 0.0)), "clamp"),
    ],
)
def test_invalid_arguments_are_named(kwargs, message):
    model = linear_model(**REACHES_TARGET)
    arguments = dict(eps=1.0, steps=3, step_size=0.1) | kwargs
    with pytest.raises(ValueError, match=message):
        targeted_attack(model, torch.zeros(2, 2), torch.tensor([0, 0]), 1, **arguments)


def test_target_equal_to_the_true_class_is_refused():
    with pytest.raises(ValueError, match="sample 1"):
        targeted_attack(
            linear_model(**REACHES_TARGET), torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([1, 1]),
            eps=1.0, steps=3, step_size=0.1,
        )


@pytest.mark.parametrize(("y", "target", "message"), [
    (torch.tensor([0, 1]), 5, r"target of sample 0 is 5; the model has 3 classes: valid indices are 0 to 2"),
    (torch.tensor([0, 7]), torch.tensor([1, 0]), r"y of sample 1 is 7; the model has 3 classes"),
    (torch.tensor([0.0, 1.5]), torch.tensor([1, 0]), r"y must hold class indices; sample 1 has 1.5"),
    (torch.tensor([0, 1]), torch.tensor([1.0, 0.25]), r"target must hold class indices; sample 1 has 0.25"),
])
def test_labels_outside_the_model_or_fractional_are_refused_not_counted_as_skipped(y, target, message):
    # Before, such labels made every sample count as skipped (or were truncated) without a word.
    with pytest.raises(ValueError, match=message):
        targeted_attack(linear_model(**REACHES_TARGET), torch.zeros(2, 2), y, target, eps=1.0, steps=3, step_size=0.1)
