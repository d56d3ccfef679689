"""The classifiers: ToyMLP, SmallCNN, ResNet9, torchvision's ResNet-18/34, SOSR's cost
regression layer, and the helpers that find and freeze a model's head.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models.pretrained import (
    PretrainedWeightsUnavailable,
    load_pretrained_state_dict,
    pretrained_cache_path,
    unavailable_message,
)


class ModelConfigError(UserError):
    """A model name, shape or option that is not valid."""


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ModelConfigError(f"{name} must be True or False, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ToyMLP(nn.Module):
    """One hidden layer MLP (section 4 uses 50 hidden units on 2-D points).

    The input is flattened from dimension 1 on, so ``in_features`` is the number of features per
    sample whatever the batch's trailing shape (2-D points, table rows, small images).
    """

    def __init__(
        self, in_features: int = 2, num_classes: int = 3, hidden: int = 50, activation: str = "relu"
    ) -> None:
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("hidden", hidden)
        if activation not in _ACTIVATIONS:
            raise ModelConfigError(
                f"unknown activation {activation!r}; known: {', '.join(sorted(_ACTIVATIONS))}"
            )
        self.hidden = nn.Linear(in_features, hidden)
        self.activation = _ACTIVATIONS[activation]()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.activation(self.hidden(x.flatten(1))))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (conv, BatchNorm, ReLU, 2x2 max-pool) and a linear head.

    Sized for 28x28 MNIST (28 -> 14 -> 7) and cheap enough to be the CPU benchmark model. The
    adaptive average pool to 2x2 before the head makes the head's size independent of the input,
    so 8x8 digits (8 -> 4 -> 2) and larger images use the same layers. Average rather than max
    pooling there keeps the input gradient spread over the map, which the attacks rely on.

    ``hidden > 0`` puts a dense layer of that many units (with ReLU) before the head; the default
    0 is the original architecture, with the same parameters and state dict keys. ``pool`` is the
    side of that average pool's output: 2 (the default) is the compact head above; 7 keeps the
    whole 7x7 map of a 28x28 image (64 x 7 x 7 features), the usual small CNN for MNIST-sized
    images, which fits a training set of thousands of images where the 2x2 summary does not.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 32, hidden: int = 0, pool: int = 2
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("width", width)
        _check_positive_int("pool", pool)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ModelConfigError(
                f"hidden must be a non-negative integer (0: no hidden layer), got {hidden!r}"
            )
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            nn.MaxPool2d(2),
            _conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(pool),
        )
        features = 2 * width * pool * pool
        # Identity when hidden is 0: it has no parameters, so older checkpoints still load.
        self.dense: nn.Module = (
            nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True))
            if hidden
            else nn.Identity()
        )
        self.head = nn.Linear(hidden or features, num_classes)
        # Channels-last kernels are about twice as fast on CPU here (NCHW max-pool is slow), and
        # the benchmark trains this model on CPU; shapes and values are unchanged.
        self.features.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.dense(self.features(x).flatten(1)))


class ResNet9(nn.Module):
    """ResNet-9 in the DAWNBench (Myrtle) layout, used as the shallow network of section 5.3.4.

    prep conv 64 -> conv 128 + pool + residual(2 x conv 128) -> conv 256 + pool
    -> conv 512 + pool + residual(2 x conv 512) -> global max pool -> linear.
    The max-pools use ``ceil_mode`` so that an odd or tiny map keeps at least one cell: 8x8
    inputs go 8 -> 4 -> 2 -> 1, and 32x32 inputs behave exactly as in the original (32 -> 4).
    The original's fixed 0.125 logit scale is left out: it was tuned to that recipe's learning rate.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        self.prep = _conv_bn_relu(in_channels, 64)
        self.layer1 = nn.Sequential(_conv_bn_relu(64, 128), nn.MaxPool2d(2, ceil_mode=True))
        self.res1 = nn.Sequential(_conv_bn_relu(128, 128), _conv_bn_relu(128, 128))
        self.layer2 = nn.Sequential(_conv_bn_relu(128, 256), nn.MaxPool2d(2, ceil_mode=True))
        self.layer3 = nn.Sequential(_conv_bn_relu(256, 512), nn.MaxPool2d(2, ceil_mode=True))
        self.res3 = nn.Sequential(_conv_bn_relu(512, 512), _conv_bn_relu(512, 512))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.prep(x))
        x = x + self.res1(x)
        x = self.layer3(self.layer2(x))
        x = x + self.res3(x)
        return self.head(self.pool(x).flatten(1))


class CostRegressionModel(nn.Module):
    """A backbone plus the linear K -> K cost-regression layer of the SOSR baseline (section 5.2).

    ``regressed_costs(x)`` is r(x), one regressed cost per class; the SOSR loss trains it. The
    forward pass returns the scores ``-r(x)``, so that everything downstream that treats the
    output as logits (argmax decisions, confusion matrices, attacks) picks the class of least
    regressed cost without knowing about the regression.

    The layer starts at weight = -I, bias = 0, so that r(x) = -logits and the scores equal the
    backbone's logits: fine-tuning starts from the pretrained baseline's decisions instead of
    from a random re-ranking of the classes.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        try:
            backbone_classes = classifier_head(backbone).out_features
        except ModelConfigError:
            backbone_classes = num_classes  # unknown backbone type: trust the caller
        if backbone_classes != num_classes:
            raise ModelConfigError(
                f"num_classes={num_classes} but the backbone outputs {backbone_classes} logits"
            )
        self.backbone = backbone
        self.cost_layer = nn.Linear(num_classes, num_classes)
        with torch.no_grad():
            self.cost_layer.weight.copy_(-torch.eye(num_classes))
            self.cost_layer.bias.zero_()

    def regressed_costs(self, x: torch.Tensor) -> torch.Tensor:
        return self.cost_layer(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.regressed_costs(x)


# --------------------------------------------------------------------------------------------
# torchvision ResNet-18/34 and their pretrained weights
# --------------------------------------------------------------------------------------------

RESNET_DEPTHS = (18, 34)


def _resnet(depth: int) -> tuple[Callable[..., nn.Module], Any]:
    """torchvision's constructor of ResNet-``depth`` and its ImageNet weights (torchvision is
    imported here, not with this module: it costs seconds, and most runs never build a ResNet)."""
    import torchvision

    weights = {18: torchvision.models.ResNet18_Weights, 34: torchvision.models.ResNet34_Weights}[depth]
    return getattr(torchvision.models, f"resnet{depth}"), weights.IMAGENET1K_V1


def _kaiming_conv(in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(
        in_channels, 64, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    # The same initialisation torchvision gives every ResNet conv.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def build_resnet(
    depth: int,
    num_classes: int,
    in_channels: int = 3,
    small_input: bool = False,
    pretrained: bool = False,
    allow_download: bool = False,
) -> nn.Module:
    """torchvision's ResNet-``depth`` (18 or 34) with a ``num_classes``-way final layer.

    ``small_input`` swaps the ImageNet stem (7x7 stride-2 conv, then max-pool) for a 3x3 stride-1
    conv and no max-pool, the usual stem for 28x28 and 32x32 images. ``in_channels`` other than 3
    replaces the first conv (keeping the ImageNet kernel unless ``small_input``).

    ``pretrained`` loads ImageNet weights (section 5.3.3 starts from them; see
    ``load_pretrained_state_dict`` for the offline behaviour). The final layer is always new and
    freshly initialised (section 5.3.3 replaces it too), and so is the first conv whenever the
    stem or ``in_channels`` changes: its pretrained kernel no longer fits.
    """
    if depth not in RESNET_DEPTHS:
        raise ModelConfigError(f"ResNet depth must be one of {list(RESNET_DEPTHS)}, got {depth!r}")
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    _check_bool("small_input", small_input)
    _check_bool("pretrained", pretrained)
    _check_bool("allow_download", allow_download)
    constructor, weights = _resnet(depth)
    # Read the weights before building: a missing file then fails before any expensive work.
    state = None
    if pretrained:
        state = load_pretrained_state_dict(weights, allow_download=allow_download)
    model = constructor(weights=None)
    if state is not None:
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:  # wrong keys/shapes, or not a dict at all
            path = pretrained_cache_path(weights)
            raise PretrainedWeightsUnavailable(
                unavailable_message(
                    weights, path, f"{path} does not hold ResNet-{depth} weights ({exc})"
                )
            ) from exc
    if small_input:
        model.conv1 = _kaiming_conv(in_channels, kernel_size=3, stride=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _kaiming_conv(in_channels, kernel_size=7, stride=2)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


# --------------------------------------------------------------------------------------------
# Fine-tuning helpers (section 5.3.3: train the new last layer alone, then everything)
# --------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel (or DataParallel) wrapper, as Ray's
    ``prepare_model`` returns. An attack must not go through DDP's forward: that would prepare
    gradient synchronisation for a backward pass that never reaches the parameters."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer of a model built here (for CostRegressionModel: its cost layer)."""
    model = unwrap_model(model)
    if isinstance(model, CostRegressionModel):
        return model.cost_layer
    if isinstance(model, (ToyMLP, SmallCNN, ResNet9)):
        return model.head
    resnet = sys.modules.get("torchvision.models.resnet")  # a model can hold one only once imported
    if resnet is not None and isinstance(model, resnet.ResNet):
        return model.fc
    raise ModelConfigError(
        f"no known classifier head for {type(model).__name__}; supported: ToyMLP, SmallCNN, "
        "ResNet9, torchvision ResNet, CostRegressionModel"
    )


def freeze_all_but_head(model: nn.Module) -> None:
    """Turn off ``requires_grad`` everywhere but the classifier head.

    This does not touch train/eval mode: BatchNorm running statistics still update in train mode,
    which is the caller's choice to make.
    """
    head = classifier_head(model)  # fails before any flag changes
    model.requires_grad_(False)
    head.requires_grad_(True)


def unfreeze_all(model: nn.Module) -> None:
    """Turn ``requires_grad`` back on for every parameter."""
    model.requires_grad_(True)
