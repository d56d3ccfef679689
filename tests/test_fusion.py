"""BatchNorm folding for the attack: same function, same input gradient, model put back as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from pipeline.method.attacks import targeted_attack
from pipeline.method.fusion import _StemConv2d, foldable_pairs, folded_batchnorm
from pipeline.models.networks import ResNet9, SmallCNN, build_resnet


def _randomise_batchnorms(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _structure(model: nn.Module) -> list[tuple[str, int]]:
    return [(name, id(module)) for name, module in model.named_modules()]


def _output_and_input_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.log_softmax(logits, 1)[:, 0].sum(), x)
    return logits.detach(), grad


MODELS = {
    "small_cnn": (lambda: SmallCNN(1, 10), (1, 28, 28), 2),
    "resnet9": (lambda: ResNet9(3, 10), (3, 16, 16), 8),
    # stem + 8 basic blocks x 2 convs + 3 downsample branches
    "resnet18_small": (lambda: build_resnet(18, 10, small_input=True), (3, 16, 16), 20),
    "resnet18_imagenet_stem": (lambda: build_resnet(18, 5), (3, 64, 64), 20),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_folded_model_computes_the_same_function_and_input_gradient(name):
    torch.manual_seed(0)
    build, shape, expected_pairs = MODELS[name]
    # float64: in float32 a ReLU sitting at ~0 can flip between any two evaluation orders,
    # which says nothing about the fold; in float64 the two must agree to rounding.
    model = _randomise_batchnorms(build()).double()
    for param in model.parameters():
        param.requires_grad_(False)
    x = torch.randn(4, *shape, dtype=torch.float64)
    before = _structure(model)
    logits, grad = _output_and_input_gradient(model, x)
    with folded_batchnorm(model) as folded:
        assert folded == expected_pairs
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        folded_logits, folded_grad = _output_and_input_gradient(model, x)
    assert _structure(model) == before
    torch.testing.assert_close(folded_logits, logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(folded_grad, grad, rtol=1e-9, atol=1e-9)


def test_the_model_is_put_back_even_when_the_body_raises():
    model = _randomise_batchnorms(SmallCNN(1, 10))
    before = _structure(model)
    with pytest.raises(RuntimeError, match="boom"):
        with folded_batchnorm(model):
            assert _structure(model) != before
            raise RuntimeError("boom")
    assert _structure(model) == before


def test_batchnorms_whose_data_flow_or_statistics_are_uncertain_are_left_alone():
    class Custom(nn.Sequential):
        def forward(self, x):  # uses the conv's output twice: folding would be wrong
            return self[1](self[0](x)) + self[0](x)

    class Block(BasicBlock):
        def forward(self, x):  # a subclass may route the data differently
            return self.bn1(self.conv1(x)) + self.conv1(x)

    hooked = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    hooked[0].register_forward_hook(lambda module, inputs, output: None)
    shared_conv = nn.Conv2d(1, 4, 3)
    patched = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    patched.forward = lambda x: patched[1](patched[0](x)) + patched[0](x)
    cases = {
        "training-mode BatchNorm": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4).train()),
        "batch statistics in eval": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
        "overridden Sequential.forward": Custom(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)),
        "hooked layer": hooked,
        "subclass of a known torchvision block": Block(4, 4),
        "forward replaced on the instance": patched,
        "layer used twice": nn.Sequential(nn.Sequential(shared_conv, nn.BatchNorm2d(4)), shared_conv),
        "BatchNorm not right after the layer": nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)),
    }
    for case, model in cases.items():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and case != "training-mode BatchNorm":
                module.eval()
        assert foldable_pairs(model) == [], case


def test_linear_then_batchnorm1d_folds_for_features_and_falls_back_for_sequences():
    torch.manual_seed(0)
    model = _randomise_batchnorms(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)))
    # On (N, L, F) input the Linear maps the last axis but BatchNorm1d normalises axis 1 (L):
    # not a per-feature affine map of the Linear's output, so the fold must not apply there.
    flat, sequence = torch.randn(7, 6), torch.randn(7, 5, 6)
    with torch.no_grad():
        expected_flat, expected_sequence = model(flat), model(sequence)
    with folded_batchnorm(model) as folded, torch.no_grad():
        assert folded == 1
        torch.testing.assert_close(model(flat), expected_flat, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(sequence), expected_sequence)


@pytest.mark.parametrize(
    "channels, kernel, stride, padding, dilation",
    [(1, 3, 1, 1, 1), (3, 3, 2, 1, 1), (3, 7, 2, 3, 1), (2, 3, 1, 0, 2), (4, 5, 3, 2, 1)],
)
def test_stem_input_gradient_equals_the_convolution_gradient(channels, kernel, stride, padding, dilation):
    torch.manual_seed(0)
    weight, bias = torch.randn(8, channels, kernel, kernel), torch.randn(8)
    x = torch.randn(3, channels, 19, 17, requires_grad=True)
    upstream = None

    def gradient(function):
        nonlocal upstream
        out = function(x)
        if upstream is None:
            upstream = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, x, upstream)
        return out.detach(), grad

    reference = gradient(lambda v: F.conv2d(v, weight, bias, stride, padding, dilation))
    stem = gradient(lambda v: _StemConv2d.apply(v, weight, bias, (stride,) * 2, (padding,) * 2, (dilation,) * 2))
    torch.testing.assert_close(stem[0], reference[0])
    torch.testing.assert_close(stem[1], reference[1], rtol=1e-4, atol=1e-4)


def test_attack_with_and_without_folding_agree():
    torch.manual_seed(0)
    model = _randomise_batchnorms(SmallCNN(1, 4, width=8))
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    target = (y + 1 + torch.arange(16) % 3) % 4
    kwargs = dict(eps=2.0, steps=6, step_size=0.5, step_rule="gradient")
    folded = targeted_attack(model, x, y, target, **kwargs)
    plain = targeted_attack(model, x, y, target, fold_batchnorm=False, **kwargs)
    assert torch.equal(folded.outcome, plain.outcome)
    assert torch.equal(folded.steps_taken, plain.steps_taken)
    torch.testing.assert_close(folded.x_adv, plain.x_adv, rtol=1e-4, atol=1e-4)
    assert len(set(folded.outcome.tolist())) >= 2
