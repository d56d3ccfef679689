"""Training objectives checked against the mathematics of sections 1.1, 3, 3.1 and 3.3."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.method.attacks import targeted_attack
from pipeline.method.costs import CostMatrixError, pair_weights, smoothed_error_rates
from pipeline.method.csada import CSADA
from pipeline.method.losses import (
    ERM,
    SOSR,
    AdjustedPenalty,
    MethodContext,
    MethodError,
    Penalty,
    cost_penalty,
    log_one_minus_softmax,
    sosr_loss,
)
from pipeline.method.peers import LogitAdjusted, SoftLabels, logit_adjusted_loss
from pipeline.method.registry import FINETUNE_METHODS, METHODS, build_method

COST = torch.tensor([[0.0, 2.0, 1.0], [0.5, 0.0, 4.0], [3.0, 1.0, 0.0]])


def tiny_model(seed=0, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, classes))


def tiny_batch(model, seed=1):
    """A batch the model gets right (so the attacks move) holding every class twice."""
    torch.manual_seed(seed)
    x = torch.randn(64, 2) * 2
    y = model(x).argmax(1)
    picked = torch.cat([(y == c).nonzero()[:2, 0] for c in range(3)])
    return x[picked], y[picked]


def grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()))


def test_pair_weights_follow_the_temperature_formula():
    weights = pair_weights(COST, temperature=2.0)
    squared = COST**2
    torch.testing.assert_close(weights, squared / squared.sum())
    assert weights.sum().item() == pytest.approx(1.0)
    with pytest.raises(CostMatrixError, match="temperature"):
        pair_weights(COST, 0.0)
    with pytest.raises(CostMatrixError, match="no positive off-diagonal"):
        pair_weights(torch.zeros(3, 3), 1.0)


def test_log_one_minus_softmax_is_exact_and_finite_when_saturated():
    logits = torch.tensor([[1.0, 2.0, -1.0], [200.0, 0.0, 0.0]])
    expected_first = torch.log1p(-torch.softmax(logits[0], 0))
    torch.testing.assert_close(log_one_minus_softmax(logits)[0], expected_first)
    saturated = log_one_minus_softmax(logits)[1]
    assert torch.isfinite(saturated).all()
    assert saturated[0].item() == pytest.approx(math.log(2) - 200, abs=1e-4)  # log(2 e^0 / e^200)


def test_penalty_is_minus_cost_weighted_log_one_minus_p():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])  # p = (0.2, 0.6, 0.2)
    # y = 0: -(2 log(1 - 0.6) + 1 log(1 - 0.2))
    expected = -(2 * math.log(0.4) + math.log(0.8))
    assert cost_penalty(logits, torch.tensor([0]), COST).item() == pytest.approx(expected, rel=1e-6)


def test_single_pair_penalty_is_objective_3():
    # c = 1 on (y', z') only: the penalty is -1[y = y'] log(1 - p_z'), as in (3)
    cost = torch.zeros(3, 3)
    cost[2, 0] = 1
    logits = torch.randn(5, 3)
    y = torch.tensor([2, 0, 2, 1, 2])
    expected = -(y == 2).float() * torch.log1p(-torch.softmax(logits, 1)[:, 0])
    torch.testing.assert_close(cost_penalty(logits, y, cost), expected)


def test_ap_is_cross_entropy_plus_alpha_penalty():
    model = tiny_model()
    x, y = torch.randn(7, 2), torch.randint(0, 3, (7,))
    loss, stats = AdjustedPenalty(cost=COST, alpha=5.0).loss(model, x, y)
    logits = model(x)
    expected = F.cross_entropy(logits, y) + 5.0 * cost_penalty(logits, y, COST).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(Penalty(cost=COST).loss(model, x, y)[0], cost_penalty(logits, y, COST).mean())
    assert set(stats) == {"ce", "penalty"}


def test_sosr_loss_by_hand_and_argmin_prediction():
    r = torch.tensor([[0.0, 1.0, 2.0]])
    y = torch.tensor([0])  # costs (0, 2, 1): class 0 is cheapest (sign +1), the others sign -1
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = softplus(0.0 - 0.0) + softplus(-(1.0 - 2.0)) + softplus(-(2.0 - 1.0))
    assert sosr_loss(r, y, COST).item() == pytest.approx(expected)
    # gradient pushes the cheapest class's regressed cost down and an under-estimated one up
    r = r.clone().requires_grad_()
    sosr_loss(r, y, COST).sum().backward()
    assert r.grad[0, 0] > 0 and r.grad[0, 1] < 0


def test_sosr_wraps_the_model_and_predicts_the_argmin_cost():
    method = SOSR(cost=COST)
    backbone = tiny_model()
    model = method.prepare_model(backbone)
    assert method.prepare_model(model) is model
    x = torch.randn(5, 2)
    torch.testing.assert_close(model(x), backbone(x))  # starts from the baseline's decisions
    assert torch.equal(model(x).argmax(1), model.regressed_costs(x).argmin(1))
    loss, _ = method.loss(model, x, torch.randint(0, 3, (5,)))
    loss.backward()
    assert loss.item() > 0


def test_erm_is_cross_entropy():
    model = tiny_model()
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(ERM().loss(model, x, y)[0], F.cross_entropy(model(x), y))


CSADA_KW = dict(eps=0.5, steps=4, step_size=0.3, step_rule="gradient", temperature=1.5)


def test_stochastic_gradient_is_unbiased_by_exact_enumeration():
    """sum over pairs of c~(pair) * grad(stochastic loss | pair) == grad(full objective (5))."""
    model = tiny_model()
    x, y = tiny_batch(model)
    full = CSADA(cost=COST, adv_weight=3.0, pairs="full", **CSADA_KW)
    stochastic = CSADA(cost=COST, adv_weight=3.0, pairs="stochastic", normalization="unbiased", **CSADA_KW)
    expected = grads(model, full.loss(model, x, y)[0])
    weights = stochastic.weights
    total = [torch.zeros_like(p) for p in model.parameters()]
    for true_class in range(3):
        for target_class in range(3):
            if weights[true_class, target_class] == 0:
                continue
            loss, _ = stochastic.stochastic_loss(model, x, y, (true_class, target_class))
            for acc, g in zip(total, grads(model, loss)):
                acc += weights[true_class, target_class] * g
    for got, want in zip(total, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_full_objective_matches_a_direct_evaluation_of_5():
    model = tiny_model()
    x, y = tiny_batch(model)
    method = CSADA(cost=COST, adv_weight=2.0, pairs="full", **CSADA_KW)
    loss, stats = method.loss(model, x, y)
    weights = method.weights
    adv = 0.0
    for i in range(len(x)):
        for z in range(3):
            if z == int(y[i]):
                continue
            attacked = targeted_attack(
                model, x[i : i + 1], y[i : i + 1], torch.tensor([z]), eps=0.5, steps=4, step_size=0.3
            )
            adv += weights[y[i], z] * F.cross_entropy(model(attacked.x_adv), y[i : i + 1])
    expected = F.cross_entropy(model(x), y) + 2.0 * adv / len(x)
    torch.testing.assert_close(loss, expected)
    assert stats["n_attacked"].item() == 2 * len(x)  # every off-diagonal cost of COST is positive


def test_authors_normalisation_averages_over_the_attacked_class_only():
    model = tiny_model()
    x, y = tiny_batch(model)
    kwargs = dict(cost=COST, adv_weight=1.0, **CSADA_KW)
    unbiased = CSADA(normalization="unbiased", **kwargs).stochastic_loss(model, x, y, (1, 2))[1]["adv"]
    authors = CSADA(normalization="attacked_mean", **kwargs).stochastic_loss(model, x, y, (1, 2))[1]["adv"]
    attacked = int((y == 1).sum())
    torch.testing.assert_close(authors, unbiased * len(x) / attacked)


def test_a_pair_whose_class_is_absent_adds_nothing():
    model = tiny_model()
    x, y = tiny_batch(model)
    keep = y != 2
    loss, stats = CSADA(cost=COST, **CSADA_KW).stochastic_loss(model, x[keep], y[keep], (2, 0))
    torch.testing.assert_close(loss, F.cross_entropy(model(x[keep]), y[keep]))
    assert stats["n_attacked"].item() == 0


def test_zero_adv_weight_recovers_erm():
    model = tiny_model()
    x, y = tiny_batch(model)
    loss, _ = CSADA(cost=COST, adv_weight=0.0, pairs="full", **CSADA_KW).loss(model, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))


def test_pair_sampler_draws_pairs_in_proportion_to_cost_to_the_temperature():
    # tau = 3: c^3 = 8, 1, 1/8, 64, 27, 1 over 101.125; proportional to c it would be 2/11.5 for (0, 1)
    method = CSADA(cost=COST, temperature=3.0, seed=3)
    draws = torch.tensor([method.sample_pair() for _ in range(6000)])
    frequency = torch.zeros(3, 3)
    frequency.index_put_((draws[:, 0], draws[:, 1]), torch.ones(len(draws)), accumulate=True)
    frequency /= len(draws)
    cubed = COST**3
    torch.testing.assert_close(frequency, cubed / cubed.sum(), atol=0.02, rtol=0)
    assert frequency.diagonal().sum() == 0
    again = CSADA(cost=COST, temperature=3.0, seed=3)
    assert [list(again.sample_pair()) for _ in range(50)] == draws[:50].tolist()


def test_start_epoch_restarts_the_pair_draws():
    method = CSADA(cost=COST, temperature=1.0, seed=3)
    method.start_epoch(11)
    first = [method.sample_pair() for _ in range(20)]
    method.sample_pair()
    method.start_epoch(11)
    assert [method.sample_pair() for _ in range(20)] == first


def test_only_pairs_with_positive_weight_are_attacked():
    cost = torch.zeros(3, 3)
    cost[1, 2] = 1.0
    model = tiny_model()
    x, y = tiny_batch(model)
    _, stats = CSADA(cost=cost, pairs="full", **CSADA_KW).loss(model, x, y)
    assert stats["n_attacked"].item() == int((y == 1).sum())


def test_csada_trains_through_the_attack_without_touching_bn_statistics_twice():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    method = CSADA(cost=COST, pairs="full", **CSADA_KW)
    model.train()
    method.loss(model, x, y)[0].backward()
    # the attack ran in eval mode; only the training forward counted a batch
    assert int(model[1].num_batches_tracked) == 1
    assert all(p.grad is not None for p in model.parameters())


# --- Theorem 1 (section 3.1) ---------------------------------------------------------------


def test_theorem_1_binary_targeted_ascent_equals_loss_ascent():
    """With two classes, ascending p_ybar is ascending the cross-entropy: same L-inf PGD path."""
    model = tiny_model(classes=2)
    torch.manual_seed(5)
    x = torch.randn(40, 2)
    y = model(x).argmax(1)
    targeted = targeted_attack(model, x, y, 1 - y, eps=0.4, steps=6, step_size=0.1, step_rule="steepest")

    # untargeted PGD on the cross-entropy, same geometry, stopping where the label flips
    delta = torch.zeros_like(x)
    running = torch.ones(len(x), dtype=torch.bool)
    for _ in range(6):
        x_in = (x + delta).requires_grad_()
        loss = F.cross_entropy(model(x_in), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_in)
        proposal = (delta + 0.1 * g.sign()).clamp(-0.4, 0.4)
        delta = torch.where(running.unsqueeze(1), proposal, delta)
        running &= model(x + delta).argmax(1) == y
    torch.testing.assert_close(targeted.x_adv, (x + delta).detach())
    # and the raw gradients are positive multiples of each other
    x_in = x.clone().requires_grad_()
    logits = model(x_in)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_in, retain_graph=True)
    (g_target,) = torch.autograd.grad(F.log_softmax(logits, 1).gather(1, (1 - y)[:, None]).sum(), x_in)
    cosine = F.cosine_similarity(g_ce, g_target, dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_theorem_1_fails_with_three_classes():
    """The paper's counter-example: r_y = 3 d, r_z = 2 d, r_3 = -10 d on |d| <= eps."""
    eps = 1.0
    d = torch.linspace(-eps, eps, 2001)
    logits = torch.stack([3 * d, 2 * d, -10 * d], dim=1)
    ce = -F.log_softmax(logits, 1)[:, 0]
    p_z = torch.softmax(logits, 1)[:, 1]
    assert d[ce.argmax()].item() == pytest.approx(-eps)
    assert d[p_z.argmax()].item() > 0


def test_build_method_registry_errors():
    context = MethodContext(cost=COST)
    known = "ap, csada, erm, logit_adjusted, penalty, soft_labels, sosr"
    with pytest.raises(ValueError, match=f"unknown method 'csda'; known: {known}"):
        build_method("csda", {}, context)
    with pytest.raises(ValueError, match="needs a cost matrix"):
        build_method("ap")
    with pytest.raises(ValueError, match=r"invalid options \['lambda'\] for method 'ap'; valid: alpha"):
        build_method("ap", {"lambda": 1}, context)
    with pytest.raises(ValueError, match="normalization"):
        build_method("csada", {"normalization": "mean"}, context)
    assert build_method("csada", {"adv_weight": 2.0, "pairs": "full"}, context).pairs == "full"


def test_the_context_reaches_the_methods_that_use_it():
    low, high = torch.full((2,), -1.0), torch.full((2,), 1.0)
    csada = build_method("csada", {}, MethodContext(cost=COST, input_bounds=(low, high), seed=9))
    assert csada.clamp == (low, high) and csada.seed == 9
    assert torch.equal(csada.generator.get_state(), torch.Generator().manual_seed(9).get_state())
    assert build_method("erm").name == "erm"  # ERM takes nothing from the context


def test_registry_options_are_the_methods_own():
    assert METHODS["csada"].options() == ("adv_weight", "temperature", "eps", "steps", "step_size", "norm",
                                          "step_rule", "pairs", "normalization", "bn", "passes", "input_clip",
                                          "pair_weights")
    assert METHODS["penalty"].options() == ("normalization",)
    assert METHODS["ap"].options() == ("alpha",)
    assert METHODS["sosr"].options() == () and METHODS["erm"].options() == ()
    assert METHODS["soft_labels"].options() == ("beta",) and METHODS["logit_adjusted"].options() == ()
    assert FINETUNE_METHODS == ("csada", "ap", "sosr", "penalty", "soft_labels", "logit_adjusted")


# --- cost-aware soft labels (Bertinetto et al. 2020) -------------------------------------------

P = (0.2, 0.6, 0.2)
LOGITS = torch.tensor([[0.0, math.log(3.0), 0.0]])  # softmax = P


def test_soft_label_targets_follow_exp_minus_beta_cost():
    targets = SoftLabels(cost=COST, beta=1.0).targets
    torch.testing.assert_close(targets.sum(1), torch.ones(3))
    row_0 = torch.tensor([1.0, math.exp(-2), math.exp(-1)])  # costs (0, 2, 1)
    torch.testing.assert_close(targets[0], row_0 / row_0.sum())
    off = ~torch.eye(3, dtype=torch.bool)
    assert (targets.diagonal()[:, None] > targets).masked_select(off).all()  # the true class holds the most mass
    free = COST.clone()
    free[1, 0] = 0.0  # mistaking 1 for 0 costs nothing: as much mass as the truth
    targets = SoftLabels(cost=free, beta=7.0).targets
    assert targets[1, 0].item() == pytest.approx(targets[1, 1].item()) and targets[1, 1] > targets[1, 2]


def test_soft_label_loss_by_hand():
    y = torch.tensor([0, 2])
    loss, stats = SoftLabels(cost=COST, beta=1.0).loss(nn.Identity(), LOGITS.expand(2, -1), y)

    def by_hand(costs):
        q = [math.exp(-c) for c in costs]
        return -sum(qz / sum(q) * math.log(pz) for qz, pz in zip(q, P))

    assert loss.item() == pytest.approx((by_hand([0, 2, 1]) + by_hand([3, 1, 0])) / 2, rel=1e-6)
    assert set(stats) == {"soft_ce"}


def test_soft_labels_with_a_large_beta_are_cross_entropy_and_train_every_weight():
    model = tiny_model()
    x, y = torch.randn(9, 2), torch.tensor([0, 1, 2] * 3)
    ce = F.cross_entropy(model(x), y)
    torch.testing.assert_close(SoftLabels(cost=COST, beta=1e3).loss(model, x, y)[0], ce)
    loss, stats = SoftLabels(cost=COST, beta=1.0).loss(model, x, y)
    assert abs(loss.item() - ce.item()) > 0.02  # mass on the cheap errors: not cross-entropy
    assert all(g.abs().sum() > 0 for g in grads(model, loss))
    assert not stats["soft_ce"].requires_grad and stats["soft_ce"].item() == loss.item()


@pytest.mark.parametrize("beta", [0.0, -1.0, math.inf, math.nan, "5", True])
def test_soft_labels_refuse_a_beta_that_is_not_a_positive_number(beta):
    with pytest.raises(MethodError, match=r"^beta must be a finite number > 0, got "):
        SoftLabels(cost=COST, beta=beta)


@pytest.mark.parametrize("method", [SoftLabels, LogitAdjusted])
def test_cost_aware_methods_refuse_a_cost_they_cannot_use(method):
    negative, diagonal = COST.clone(), COST.clone()
    negative[0, 1] = -1.0
    diagonal[2, 2] = 0.5
    with pytest.raises(MethodError, match=r"invalid cost c\(0, 1\) = -1.0; costs must be finite and >= 0"):
        method(cost=negative)
    with pytest.raises(MethodError, match=r"invalid cost c\(2, 2\) = 0.5;.* with c\(y, y\) = 0"):
        method(cost=diagonal)
    with pytest.raises(MethodError, match=r"must be a K x K matrix, got shape \(3, 2\)"):
        method(cost=COST[:, :2])


# --- logit-adjusted cost-sensitive loss (Narasimhan and Menon 2021) ---------------------------

# COST's row maxima a = (2, 4, 3) give the gains G = a_y - c(y, z), D = diag(a), M = G D^-1.
GAIN = torch.tensor([[2.0, 0.0, 1.0], [3.5, 4.0, 0.0], [0.0, 2.0, 3.0]])
M = torch.tensor([[1.0, 0.0, 1 / 3], [1.75, 1.0, 0.0], [0.0, 0.5, 1.0]])


def test_logit_adjusted_loss_by_hand():
    method = LogitAdjusted(cost=COST)
    torch.testing.assert_close(method.weights, M)
    torch.testing.assert_close(method.log_d, torch.tensor([2.0, 4.0, 3.0]).log())
    # logits (0, log 3, 0) - log(2, 4, 3): exp = (1/2, 3/4, 1/3), softmax = (6, 9, 4) / 19
    q0, q1, q2 = (math.log(v / 19) for v in (6, 9, 4))
    expected = [-(q0 + q2 / 3), -(1.75 * q0 + q1), -(0.5 * q1 + q2)]
    per_sample = logit_adjusted_loss(LOGITS.expand(3, -1), torch.arange(3), method.weights, method.log_d)
    torch.testing.assert_close(per_sample, torch.tensor(expected))
    loss, stats = method.loss(nn.Identity(), LOGITS.expand(3, -1), torch.arange(3))
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert set(stats) == {"hybrid"}


def test_logit_adjusted_is_cross_entropy_for_uniform_costs_and_pure_logit_adjustment_for_class_costs():
    model = tiny_model()
    x, y = torch.randn(9, 2), torch.tensor([0, 1, 2] * 3)
    logits = model(x)
    uniform = 3.0 * (1 - torch.eye(3))  # G = 3 I: M = I and a constant adjustment
    torch.testing.assert_close(LogitAdjusted(cost=uniform).loss(model, x, y)[0], F.cross_entropy(logits, y))
    w = torch.tensor([1.0, 5.0, 2.0])
    by_class = w[:, None] * (1 - torch.eye(3))  # c(y, z) = w_y: G = diag(w), the paper's diagonal case
    # The authors' code (google-research non_decomp/utils.py, loss_type 'logit_adjusted'): cross-
    # entropy on logits - log(class_weights / base_probs ** tau), here with balanced classes.
    base_probs, tau = torch.full((3,), 1 / 3), 1.0
    torch.testing.assert_close(LogitAdjusted(cost=by_class).loss(model, x, y)[0],
                               F.cross_entropy(logits - torch.log(w / base_probs ** tau), y))
    loss, stats = LogitAdjusted(cost=COST).loss(model, x, y)
    assert all(g.abs().sum() > 0 for g in grads(model, loss))
    assert not stats["hybrid"].requires_grad and stats["hybrid"].item() == loss.item()


def test_logit_adjusted_minimiser_is_the_cost_optimal_decision():
    """Proposition 4: for a posterior p the expected loss is minimised at f = log(p^T G) + const,
    whose argmax is argmin_z sum_y p_y c(y, z)."""
    method = LogitAdjusted(cost=COST.double())
    torch.manual_seed(0)
    posteriors = torch.distributions.Dirichlet(torch.ones(3, dtype=torch.float64)).sample((50,))
    for p in posteriors:
        best = (p @ GAIN.double()).log().requires_grad_()
        expected_loss = p @ logit_adjusted_loss(best.expand(3, -1), torch.arange(3), method.weights, method.log_d)
        (gradient,) = torch.autograd.grad(expected_loss, best)
        torch.testing.assert_close(gradient, torch.zeros(3, dtype=torch.float64))  # convex in f: the minimum
        assert best.argmax() == (p @ COST.double()).argmin()
    # the decision is not just the most probable class
    assert ((posteriors @ GAIN.double()).argmax(1) != posteriors.argmax(1)).any()


def test_logit_adjusted_gains_of_a_single_costly_pair():
    cost = torch.zeros(3, 3)
    cost[2, 0] = 1.0  # rows 0 and 1 cost nothing: their offset is the largest cost, 1
    method = LogitAdjusted(cost=cost)
    torch.testing.assert_close(method.weights, 1 - cost)
    torch.testing.assert_close(method.log_d, torch.zeros(3))
    with pytest.raises(MethodError, match="every cost is 0"):
        LogitAdjusted(cost=torch.zeros(3, 3))
    with pytest.raises(MethodError, match=r"invalid options \['tau'\] for method 'logit_adjusted'; valid: none"):
        build_method("logit_adjusted", {"tau": 1.0}, MethodContext(cost=COST))


def three_gaussians(per_class, seed):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.7]])
    y = torch.arange(3).repeat_interleave(per_class)
    return centres[y] + torch.randn(3 * per_class, 2, generator=generator), y


def test_logit_adjusted_training_avoids_the_costliest_error():
    """Overlapping classes, mistaking 0 for 1 costs 10, every other error 1: trained the same way,
    the logit-adjusted linear model makes far fewer 0 -> 1 test errors than ERM's, at lower cost."""
    cost = 1 - torch.eye(3)
    cost[0, 1] = 10.0
    x, y = three_gaussians(200, seed=0)
    x_test, y_test = three_gaussians(1000, seed=1)

    def fit(method):
        torch.manual_seed(0)
        model = nn.Linear(2, 3)
        optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(300):
            optimiser.zero_grad()
            method.loss(model, x, y)[0].backward()
            optimiser.step()
        with torch.no_grad():
            predicted = model(x_test).argmax(1)
        return int(((y_test == 0) & (predicted == 1)).sum()), cost[y_test, predicted].mean().item()

    erm_errors, erm_cost = fit(build_method("erm"))
    la_errors, la_cost = fit(build_method("logit_adjusted", {}, MethodContext(cost=cost)))
    assert erm_errors > 50  # the problem does make ERM pay for the costly pair (125 of 1000)
    assert la_errors < erm_errors / 3 and la_cost < 0.8 * erm_cost  # 17 errors; mean cost 0.43 against 0.64


# --- how the model runs: BatchNorm frozen, separate passes, input clipping (the authors' code) ----

def bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def bn_batch(model, seed=1):
    """A batch the model (in eval mode) gets right, holding classes 1 and 2 (the pairs tested)."""
    model.eval()
    x, y = tiny_batch(model, seed)
    model.train()
    assert {1, 2} <= set(y.tolist())
    return x, y


def test_bn_frozen_switches_to_eval_at_the_first_attack_and_stays_there_until_the_next_epoch():
    model = bn_model()
    x, y = bn_batch(model)
    method = CSADA(cost=COST, eps=1.0, steps=3, step_size=0.1, bn="frozen", passes="separate", seed=0)
    bn = model[1]
    before = bn.running_mean.clone()
    method.stochastic_loss(model, x, y, (1, 2))
    assert not model.training  # left in eval mode, as the authors' attack leaves it
    after_first = bn.running_mean.clone()
    assert not torch.equal(after_first, before)  # the first clean pass ran in train mode
    method.stochastic_loss(model, x, y, (2, 1))
    assert torch.equal(bn.running_mean, after_first)  # from then on the statistics are frozen


def test_bn_train_keeps_train_mode_and_updates_the_statistics_every_batch():
    model = bn_model()
    x, y = bn_batch(model)
    method = CSADA(cost=COST, eps=1.0, steps=3, step_size=0.1, bn="train", passes="separate", seed=0)
    method.stochastic_loss(model, x, y, (1, 2))
    first = model[1].running_mean.clone()
    method.stochastic_loss(model, x, y, (2, 1))
    assert model.training and not torch.equal(model[1].running_mean, first)


def test_separate_and_joint_passes_agree_without_batchnorm_and_differ_with_it():
    for make, same in ((tiny_model, True), (bn_model, False)):
        losses = []
        for passes in ("joint", "separate"):
            model = make()
            x, y = bn_batch(model)
            method = CSADA(cost=COST, eps=1.0, steps=3, step_size=0.1, passes=passes, seed=0)
            losses.append(method.stochastic_loss(model, x, y, (1, 2))[0].detach())
        assert torch.allclose(losses[0], losses[1], atol=1e-6) is same


def test_bn_frozen_needs_separate_passes_and_options_are_checked():
    with pytest.raises(MethodError, match="bn 'frozen' runs clean and adversarial inputs in separate passes"):
        CSADA(cost=COST, bn="frozen")
    with pytest.raises(MethodError, match="bn must be one of train, frozen; got 'eval'"):
        CSADA(cost=COST, bn="eval")
    with pytest.raises(MethodError, match="pair_weights must be one of cost, errors"):
        CSADA(cost=COST, pair_weights="count")
    with pytest.raises(MethodError, match="normalization must be one of batch, class"):
        Penalty(cost=COST, normalization="mean")


def test_input_clip_keeps_the_attack_inside_the_valid_range_only_when_asked():
    model = tiny_model()
    x, y = tiny_batch(model)
    bounds = (torch.tensor(-0.5), torch.tensor(0.5))
    x = x.clamp(-0.5, 0.5)
    y = model(x).argmax(1)
    for clip, inside in ((True, True), (False, False)):
        method = CSADA(cost=COST, eps=5.0, steps=5, step_size=2.0, clamp=bounds, input_clip=clip, seed=0)
        result = method.attack(model, x, y, (y + 1) % 3)
        assert bool(((result.x_adv >= -0.5 - 1e-6) & (result.x_adv <= 0.5 + 1e-6)).all()) is inside


# --- error-aware pair weights (beyond the paper) ------------------------------------------------

def test_smoothed_error_rates_by_hand():
    labels = torch.tensor([0, 0, 0, 1])
    predictions = torch.tensor([0, 1, 1, 1])
    rates = smoothed_error_rates(predictions, labels, 3)
    # class 0: counts (1, 2, 0) of 3 samples -> (2, 3, 1) / 6; class 1: (0, 1, 0) -> (1, 2, 1) / 4; class 2: 1/3
    assert torch.allclose(rates[0], torch.tensor([2, 3, 1], dtype=torch.float64) / 6)
    assert torch.allclose(rates[1], torch.tensor([1, 2, 1], dtype=torch.float64) / 4)
    assert torch.allclose(rates[2], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_error_aware_weights_are_cost_to_the_tau_times_the_error_rate():
    method = CSADA(cost=COST, temperature=2.0, pair_weights="errors", seed=0)
    assert method.needs_start_predictions and not CSADA(cost=COST).needs_start_predictions
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = F.one_hot(torch.tensor([1, 1, 1, 2, 2, 2]), 3).float()  # class 0 -> 1 twice, 1 -> 2 once
    method.start_training(logits, labels)
    rates = smoothed_error_rates(torch.tensor([1, 1, 1, 2, 2, 2]), labels, 3)
    expected = COST.double() ** 2 * rates * (1 - torch.eye(3, dtype=torch.float64))
    assert torch.allclose(method.weights.double(), expected / expected.sum(), atol=1e-6)
    plain = CSADA(cost=COST, temperature=2.0, seed=0)
    plain.start_training(logits, labels)  # the cost weighting ignores predictions
    assert torch.allclose(plain.weights, pair_weights(COST.double(), 2.0).float())


# --- the penalty as the authors' pair sweep normalises it ---------------------------------------

def test_penalty_class_normalization_is_the_mean_over_the_costly_class():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 2])
    single = torch.zeros(3, 3)
    single[0, 1] = 1.0  # the pair (a, b) = (0, 1)

    class Fixed(nn.Module):
        def forward(self, x):
            return logits

    p_b = torch.softmax(logits, 1)[:, 1]
    by_class = Penalty(cost=single, normalization="class").loss(Fixed(), logits, y)[0]
    assert torch.allclose(by_class, -torch.log(1 - p_b[:2]).mean())  # mean over the 2 class-0 samples
    by_batch = Penalty(cost=single).loss(Fixed(), logits, y)[0]
    assert torch.allclose(by_batch, -torch.log(1 - p_b[:2]).sum() / 4)
