"""Tests for pipeline/models/registry.py: shapes, determinism, registry errors, fine-tuning helpers,
the SOSR cost-regression wrapper and the offline handling of pretrained weights."""

from __future__ import annotations

import copy
import socket
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights

from pipeline.models.networks import (
    CostRegressionModel,
    ModelConfigError,
    ResNet9,
    SmallCNN,
    ToyMLP,
    build_resnet,
    classifier_head,
    freeze_all_but_head,
    unfreeze_all,
)
from pipeline.models.pretrained import (
    PretrainedWeightsUnavailable,
    load_pretrained_state_dict,
    pretrained_cache_path,
)
from pipeline.models.registry import MODELS, build_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty torch hub cache; torch.hub.get_dir() then is TORCH_HOME/hub."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any torch.hub.set_dir elsewhere
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("model", "batch_shape", "num_classes"),
    [
        (lambda: ToyMLP(), (4, 2), 3),
        (lambda: ToyMLP(in_features=6, num_classes=2), (4, 2, 3), 2),  # flattened input
        (lambda: SmallCNN(1, 10), (2, 1, 28, 28), 10),
        (lambda: SmallCNN(1, 10), (2, 1, 8, 8), 10),
        (lambda: SmallCNN(3, 5, width=8), (2, 3, 33, 31), 5),
        (lambda: ResNet9(3, 10), (2, 3, 32, 32), 10),
        (lambda: ResNet9(1, 4), (2, 1, 8, 8), 4),
        (lambda: build_resnet(18, 10, in_channels=1, small_input=True), (2, 1, 28, 28), 10),
        (lambda: build_resnet(18, 7, small_input=True), (2, 3, 32, 32), 7),
        (lambda: build_resnet(34, 6, small_input=False), (2, 3, 64, 64), 6),
    ],
)
def test_output_shapes(model, batch_shape: tuple[int, ...], num_classes: int) -> None:
    net = model().eval()
    with torch.no_grad():
        out = net(torch.randn(batch_shape))
    assert out.shape == (batch_shape[0], num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_small_cnn_input_gradient_has_input_shape_and_layout_agnostic_values() -> None:
    net = SmallCNN(1, 10).eval()
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    # The channels-last conversion inside forward must not change the function computed.
    reference = copy.deepcopy(net.features).to(memory_format=torch.contiguous_format)
    assert reference[0][0].weight.is_contiguous()
    with torch.no_grad():
        plain = net.head(reference(x.detach().contiguous()).flatten(1))
        assert torch.allclose(net(x.detach()), plain, atol=1e-5)


def test_toy_mlp_matches_hand_computation() -> None:
    net = ToyMLP(in_features=2, num_classes=2, hidden=2, activation="relu")
    with torch.no_grad():
        net.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        net.hidden.bias.copy_(torch.tensor([0.0, 1.0]))
        net.head.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
        net.head.bias.copy_(torch.tensor([0.5, 0.0]))
    # x = (2, 3): hidden pre-activation (2, -2) -> relu (2, 0) -> logits (2.5, -2)
    # x = (-1, -4): hidden (-1, 5) -> relu (0, 5) -> logits (10.5, 2.5)
    out = net(torch.tensor([[2.0, 3.0], [-1.0, -4.0]]))
    assert torch.allclose(out, torch.tensor([[2.5, -2.0], [10.5, 2.5]]))
    tanh_net = ToyMLP(2, 2, hidden=2, activation="tanh")
    tanh_net.load_state_dict(net.state_dict())
    # x = (2, 3): tanh(2, -2) -> first logit tanh(2) + 2 tanh(-2) + 0.5 = 0.5 - tanh(2)
    expected = 0.5 - torch.tanh(torch.tensor([2.0]))
    assert torch.allclose(tanh_net(torch.tensor([[2.0, 3.0]]))[:, 0], expected, atol=1e-5)


def test_resnet_stems() -> None:
    small = build_resnet(18, 10, in_channels=1, small_input=True)
    assert small.conv1.in_channels == 1
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    gray = build_resnet(34, 10, in_channels=1)
    assert gray.conv1.in_channels == 1
    assert gray.conv1.kernel_size == (7, 7) and gray.conv1.stride == (2, 2)
    assert isinstance(gray.maxpool, nn.MaxPool2d)
    assert gray.fc.out_features == 10 and gray.fc.in_features == 512


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_model(name: str) -> None:
    shape = (5,) if name == "mlp" else (3, 8, 8)

    def make() -> nn.Module:
        torch.manual_seed(123)
        return build_model(name, num_classes=4, input_shape=shape).eval()

    first, second = make(), make()
    second_state = second.state_dict()
    for key, value in first.state_dict().items():
        assert torch.equal(value, second_state[key]), key
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
    torch.manual_seed(124)
    third = build_model(name, num_classes=4, input_shape=shape)
    assert not torch.equal(
        classifier_head(first).weight, classifier_head(third).weight
    ), "a different seed should give different weights"


# ---------------------------------------------------------------- registry


def test_build_model_picks_channels_and_features() -> None:
    mlp = build_model("mlp", num_classes=3, input_shape=(2,), hidden=7, activation="tanh")
    assert isinstance(mlp, ToyMLP) and mlp.hidden.in_features == 2 and mlp.hidden.out_features == 7
    assert isinstance(mlp.activation, nn.Tanh)
    flat = build_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    assert flat.hidden.in_features == 64
    cnn = build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28), width=8)
    assert isinstance(cnn, SmallCNN) and classifier_head(cnn).in_features == 2 * 8 * 4
    r9 = build_model("resnet9", num_classes=10, input_shape=(3, 32, 32))
    assert isinstance(r9, ResNet9) and r9.prep[0].in_channels == 3


@pytest.mark.parametrize("name", ["small_cnn", "resnet9", "resnet18"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [28, 32])
def test_image_models_build_for_gray_and_colour_small_images(name: str, channels: int, side: int) -> None:
    model = build_model(name, num_classes=5, input_shape=(channels, side, side)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, side, side))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_small_cnn_hidden_layer_is_optional_and_off_by_default() -> None:
    plain = build_model("small_cnn", num_classes=4, input_shape=(1, 28, 28))
    # hidden 0 is the original network: the same parameters under the same names.
    assert isinstance(plain.dense, nn.Identity)
    assert all(k.startswith(("features.", "head.")) for k in plain.state_dict())
    assert classifier_head(plain).in_features == 2 * 32 * 4
    dense = build_model("small_cnn", num_classes=4, input_shape=(3, 32, 32), hidden=16, width=8)
    assert [type(m) for m in dense.dense] == [nn.Linear, nn.ReLU]
    assert dense.dense[0].in_features == 2 * 8 * 4 and dense.dense[0].out_features == 16
    assert classifier_head(dense) is dense.head and dense.head.in_features == 16
    assert dense(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    freeze_all_but_head(dense)
    assert not any(p.requires_grad for p in dense.dense.parameters())
    assert all(p.requires_grad for p in dense.head.parameters())


def test_small_cnn_pool_keeps_the_whole_feature_map_when_asked() -> None:
    # pool 7 on a 28x28 image: the 7x7 map after two max-pools passes unchanged (64 x 7 x 7 features).
    wide = build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28), hidden=128, pool=7)
    assert wide.dense[0].in_features == 64 * 7 * 7
    x = torch.randn(2, 1, 28, 28)
    wide.eval()
    torch.testing.assert_close(wide.features(x), wide.features[:-1](x))  # the pool is the identity here
    assert wide(x).shape == (2, 10)
    with pytest.raises(ModelConfigError, match="pool"):
        build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28), pool=0)


@pytest.mark.parametrize(
    ("input_shape", "options", "small"),
    [
        ((1, 28, 28), {}, True),
        ((3, 64, 64), {}, True),
        ((3, 65, 64), {}, False),
        ((3, 224, 224), {}, False),
        ((3, 32, 32), {"small_input": False}, False),
        ((3, 224, 224), {"small_input": True}, True),
    ],
)
def test_resnet_small_input_default(input_shape, options, small: bool) -> None:
    model = build_model("resnet18", num_classes=10, input_shape=input_shape, **options)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.conv1.in_channels == input_shape[0]
    assert isinstance(model.maxpool, nn.Identity) == small
    assert model.conv1.kernel_size == ((3, 3) if small else (7, 7))


def test_unknown_model_lists_known_names() -> None:
    known = "mlp, resnet18, resnet34, resnet9, small_cnn"
    with pytest.raises(ModelConfigError, match=f"'resnet50'.*known: {known}"):
        build_model("resnet50", num_classes=10, input_shape=(3, 32, 32))


IMAGE = (3, 8, 8)


@pytest.mark.parametrize(
    ("name", "num_classes", "input_shape", "options", "match"),
    [
        ("mlp", 0, (2,), {}, "num_classes.*0"),
        ("mlp", True, (2,), {}, "num_classes.*True"),
        ("mlp", 3, (0,), {}, "positive"),
        ("mlp", 3, (2,), {"width": 4}, r"\['width'\].*valid: \['activation', 'hidden'\]"),
        ("mlp", 3, (2,), {"activation": "gelu"}, "gelu.*relu, tanh"),
        ("resnet9", 3, IMAGE, {"width": 4}, "width.*none"),
        ("resnet9", 3, IMAGE, {"pretrained": True}, "resnet9.*resnet18, resnet34"),
        ("small_cnn", 3, (784,), {}, r"\(C, H, W\).*\(784,\)"),
        ("small_cnn", 3, IMAGE, {"width": -1}, "width.*-1"),
        ("small_cnn", 3, IMAGE, {"hidden": -1}, r"hidden must be a non-negative integer.*-1"),
        ("small_cnn", 3, IMAGE, {"hidden": True}, r"hidden must be a non-negative integer.*True"),
        ("resnet18", 3, (3, 4, 4), {}, "at least 8x8.*4, 4"),
        ("resnet18", 3, (3, 32), {}, r"input_shape.*\(3, 32\)"),
        ("resnet18", 3, IMAGE, {"small_input": "yes"}, "small_input.*'yes'"),
    ],
)
def test_invalid_options_fail_clearly(
    name: str, num_classes, input_shape: tuple[int, ...], options: dict, match: str
) -> None:
    with pytest.raises(ModelConfigError, match=match):
        build_model(name, num_classes=num_classes, input_shape=input_shape, **options)


def test_model_config_error_is_value_error() -> None:
    assert issubclass(ModelConfigError, ValueError)
    with pytest.raises(ModelConfigError, match="depth.*18, 34.*50"):
        build_resnet(50, 10)


# ---------------------------------------------------------------- fine-tuning helpers


@pytest.mark.parametrize(
    ("model", "head_attr"),
    [
        (lambda: ToyMLP(), "head"),
        (lambda: SmallCNN(width=4), "head"),
        (lambda: ResNet9(), "head"),
        (lambda: build_resnet(18, 3, small_input=True), "fc"),
        (lambda: CostRegressionModel(ToyMLP(), 3), "cost_layer"),
    ],
)
def test_freeze_all_but_head(model, head_attr: str) -> None:
    net = model()
    head = getattr(net, head_attr)
    assert classifier_head(net) is head
    head_ids = {id(p) for p in head.parameters()}
    assert {id(p) for p in classifier_head(net).parameters()} == head_ids and len(head_ids) == 2
    freeze_all_but_head(net)
    for p in net.parameters():
        assert p.requires_grad == (id(p) in head_ids)
    unfreeze_all(net)
    assert all(p.requires_grad for p in net.parameters())


def test_frozen_backbone_gets_no_gradient() -> None:
    net = ToyMLP()
    freeze_all_but_head(net)
    net(torch.randn(4, 2)).sum().backward()
    assert net.hidden.weight.grad is None
    assert net.head.weight.grad is not None


def test_classifier_head_unknown_model() -> None:
    with pytest.raises(ModelConfigError, match="Sequential"):
        classifier_head(nn.Sequential(nn.Linear(2, 2)))
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ModelConfigError):
        freeze_all_but_head(net)
    assert all(p.requires_grad for p in net.parameters()), "a failed freeze must change nothing"


def test_classifier_head_sees_through_data_parallel() -> None:
    net = ToyMLP()
    assert classifier_head(nn.DataParallel(net)) is net.head


# ---------------------------------------------------------------- SOSR cost regression


def test_cost_regression_starts_at_backbone_logits() -> None:
    backbone = SmallCNN(1, 4, width=4).eval()
    model = CostRegressionModel(backbone, 4).eval()
    assert torch.equal(model.cost_layer.weight, -torch.eye(4))
    assert torch.equal(model.cost_layer.bias, torch.zeros(4))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        logits = backbone(x)
        assert torch.allclose(model(x), logits)
        assert torch.allclose(model.regressed_costs(x), -logits)


def test_cost_regression_scores_pick_least_cost() -> None:
    backbone = ToyMLP(2, 3)
    model = CostRegressionModel(backbone, 3)
    with torch.no_grad():
        weight = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [2.0, 0.0, 1.0]])
        model.cost_layer.weight.copy_(weight)
        model.cost_layer.bias.copy_(torch.tensor([0.5, -0.5, 0.0]))
        x = torch.randn(16, 2)
        costs = model.regressed_costs(x)
        scores = model(x)
        logits = backbone(x)
    assert torch.allclose(costs, logits @ model.cost_layer.weight.T + model.cost_layer.bias)
    assert torch.allclose(scores, -costs)
    assert torch.equal(scores.argmax(1), costs.argmin(1))


def test_cost_regression_checks_class_count() -> None:
    with pytest.raises(ModelConfigError, match="num_classes=4.*3 logits"):
        CostRegressionModel(ToyMLP(2, 3), 4)


# ---------------------------------------------------------------- pretrained weights


def test_cache_path_follows_torch_home(empty_torch_home: Path) -> None:
    path = pretrained_cache_path(ResNet34_Weights.IMAGENET1K_V1)
    assert path == empty_torch_home / "hub" / "checkpoints" / "resnet34-b627a593.pth"


def test_missing_weights_fail_fast_offline(empty_torch_home: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model("resnet34", num_classes=5, input_shape=(3, 224, 224), pretrained=True)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "resnet34-b627a593.pth" in message
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert "TORCH_HOME" in message
    assert not (empty_torch_home / "hub" / "checkpoints" / "resnet34-b627a593.pth").exists()


def test_cached_weights_load(empty_torch_home: Path) -> None:
    weights = ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18(weights=None).state_dict()
    path = pretrained_cache_path(weights)
    path.parent.mkdir(parents=True)
    torch.save(reference, path)

    model = build_resnet(18, 5, pretrained=True)
    state = model.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(state[key], reference[key]), key
    assert model.fc.out_features == 5  # the 1000-way ImageNet head is replaced

    # Changing the stem keeps the body's weights and freshly initialises the first conv.
    small = build_model("resnet18", num_classes=5, input_shape=(1, 28, 28), pretrained=True)
    key = "layer2.0.conv1.weight"
    assert torch.equal(small.state_dict()[key], reference[key])
    assert small.conv1.weight.shape == (64, 1, 3, 3)


def test_unreadable_or_wrong_weights_fail_clearly(empty_torch_home: Path) -> None:
    path = pretrained_cache_path(ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsUnavailable, match="could not be read"):
        build_resnet(18, 5, pretrained=True)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not hold ResNet-18 weights"):
        build_resnet(18, 5, pretrained=True)


def test_download_errors_are_wrapped(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_timeouts: list[float | None] = []

    def offline_download(url: str, dst: str, *args, **kwargs) -> None:
        seen_timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    before = socket.getdefaulttimeout()
    with pytest.raises(PretrainedWeightsUnavailable, match="download failed.*network unreachable"):
        load_pretrained_state_dict(
            ResNet18_Weights.IMAGENET1K_V1, allow_download=True, timeout_s=3.0
        )
    assert seen_timeouts == [3.0]
    assert socket.getdefaulttimeout() == before
