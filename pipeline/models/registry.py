"""A model by name: ``build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28))``.

The registry (:data:`MODELS`) maps a name to a builder that checks the input geometry and the
model's own options; the networks themselves are :mod:`pipeline.models.networks`'s:

- ``mlp``: ToyMLP, one hidden layer of 50 units, the proof-of-concept model of section 4.
- ``small_cnn``: two conv blocks, an optional dense layer and a linear head; a fast CPU model for
  MNIST, 8x8 digits and a user's small images.
- ``resnet9``: the DAWNBench (Myrtle) ResNet-9, the shallow network of section 5.3.4.
- ``resnet18``/``resnet34`` from torchvision; section 5.1 trains ResNet-34 on CIFAR-10 and MNIST,
  and section 5.3.3 fine-tunes an ImageNet-pretrained ResNet-34.

Pretrained weights are never downloaded silently: ``pretrained=True`` reads the torch hub cache
and raises ``PretrainedWeightsUnavailable`` (saying which file to fetch and where to put it)
unless ``allow_download=True``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from pipeline.models.networks import (
    ModelConfigError,
    ResNet9,
    SmallCNN,
    ToyMLP,
    _check_bool,
    _check_positive_int,
    build_resnet,
)

# Smallest image side every image model here accepts (the 8x8 digits data set).
MIN_IMAGE_SIDE = 8
# Up to this side, ``build_model`` gives ResNet-18/34 the CIFAR-style stem: the ImageNet stem
# (stride-2 7x7 conv, then max-pool) would shrink a 32x32 image to 8x8 before the first block.
SMALL_INPUT_MAX_SIDE = 64


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

InputShape = tuple[int, ...]


def _image_shape(name: str, input_shape: InputShape) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelConfigError(
            f"model {name!r} needs an image input_shape (C, H, W), got {input_shape!r}"
        )
    channels, height, width = input_shape
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ModelConfigError(
            f"model {name!r} needs images of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}, "
            f"got input_shape {input_shape!r}"
        )
    return channels, height, width


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ModelConfigError(
            f"model {name!r} has no pretrained weights; "
            "pretrained=True is valid for resnet18, resnet34"
        )


def _build_mlp(
    *,
    num_classes: int,
    input_shape: InputShape,
    pretrained: bool,
    hidden: int = 50,
    activation: str = "relu",
) -> nn.Module:
    _no_pretrained("mlp", pretrained)
    return ToyMLP(math.prod(input_shape), num_classes, hidden=hidden, activation=activation)


def _build_small_cnn(
    *, num_classes: int, input_shape: InputShape, pretrained: bool, width: int = 32, hidden: int = 0, pool: int = 2
) -> nn.Module:
    _no_pretrained("small_cnn", pretrained)
    channels, _, _ = _image_shape("small_cnn", input_shape)
    return SmallCNN(channels, num_classes, width=width, hidden=hidden, pool=pool)


def _build_resnet9(*, num_classes: int, input_shape: InputShape, pretrained: bool) -> nn.Module:
    _no_pretrained("resnet9", pretrained)
    channels, _, _ = _image_shape("resnet9", input_shape)
    return ResNet9(channels, num_classes)


def _resnet_builder(depth: int) -> Callable[..., nn.Module]:
    def build(
        *,
        num_classes: int,
        input_shape: InputShape,
        pretrained: bool,
        small_input: bool | None = None,
        allow_download: bool = False,
    ) -> nn.Module:
        channels, height, width = _image_shape(f"resnet{depth}", input_shape)
        if small_input is None:
            small_input = max(height, width) <= SMALL_INPUT_MAX_SIDE
        return build_resnet(
            depth,
            num_classes,
            in_channels=channels,
            small_input=small_input,
            pretrained=pretrained,
            allow_download=allow_download,
        )

    return build


# name -> builder(*, num_classes, input_shape, pretrained, **model options)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _build_mlp,
    "small_cnn": _build_small_cnn,
    "resnet9": _build_resnet9,
    "resnet18": _resnet_builder(18),
    "resnet34": _resnet_builder(34),
}

_COMMON_ARGS = frozenset({"num_classes", "input_shape", "pretrained"})


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    pretrained: bool = False,
    **options: Any,
) -> nn.Module:
    """Build registered model ``name`` for inputs of ``input_shape`` ((C, H, W) or (F,)).

    Image models take their input channels from ``input_shape``; ResNet-18/34 get the small-input
    stem when both sides are at most 64 pixels unless ``small_input`` is given. ``options`` are
    the model's own keyword options (mlp: hidden, activation; small_cnn: width, hidden; resnet18/34:
    small_input, allow_download); anything else is an error.
    """
    if name not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    _check_positive_int("num_classes", num_classes)
    _check_bool("pretrained", pretrained)
    shape = tuple(input_shape)
    if len(shape) not in (1, 3) or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
    ):
        raise ModelConfigError(
            f"input_shape must be (C, H, W) or (F,) of positive integers, got {input_shape!r}"
        )
    builder = MODELS[name]
    valid = sorted(set(inspect.signature(builder).parameters) - _COMMON_ARGS)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ModelConfigError(
            f"unknown option(s) {unknown} for model {name!r}; valid: {valid or 'none'}"
        )
    return builder(num_classes=num_classes, input_shape=shape, pretrained=pretrained, **options)
