"""Fold eval-mode BatchNorm into the layer before it, for the attack's repeated passes.

In eval mode a BatchNorm is a fixed per-channel affine map, y = s * x + t with
s = gamma / sqrt(running_var + eps) and t = beta - s * running_mean. Applied to the output
of a convolution or linear layer with weight W and bias b it can be absorbed into that layer:
W' = s * W (per output channel) and b' = s * b + t. Algorithm 1 runs up to K + 1 forward and
K backward passes through a frozen model, so removing every BatchNorm pass (forward and
backward) saves a large share of an attack step on small CNNs (see ``bench/attack.py``).
The folded model computes the same function; only float rounding differs (~1e-6 relative).

Which pairs are folded. Without tracing the model we cannot know where a layer's output goes,
and tracing (torch.fx) would freeze Python-level control flow and side effects of a user's
``forward``. So only pairs whose data flow is certain are folded:

* a ``Linear`` or ``ConvNd`` immediately followed by a ``BatchNormNd`` inside an
  ``nn.Sequential`` whose ``forward`` is Sequential's own (our ``SmallCNN`` and ``ResNet9``
  blocks, torchvision's downsample branches);
* the named (conv, bn) attributes of torchvision's ``ResNet``, ``BasicBlock`` and
  ``Bottleneck`` when the class's ``forward`` is torchvision's own (``bn(conv(x))`` there).

In both cases neither layer may carry hooks or appear anywhere else in the model, the layers
must use their stock ``forward``, and the BatchNorm must normalise with running statistics.
Everything else runs unchanged.

The model is changed only inside the context: the two entries are swapped for a folded
layer and an identity, and put back on exit, even when the body raises.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_FOLDABLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)



def _known_layouts() -> dict[type[nn.Module], tuple[tuple[str, str], ...]]:
    """Modules whose forward applies bn(conv(x)) and uses conv(x) nowhere else, by attribute name:
    torchvision's ResNet blocks. A model can only hold them once torchvision is imported, so it is
    not imported here (it costs seconds)."""
    resnet = sys.modules.get("torchvision.models.resnet")
    if resnet is None:
        return {}
    return {resnet.ResNet: (("conv1", "bn1"),),
            resnet.BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
            resnet.Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))}

# The input gradient of a convolution with few input channels (an image model's stem) is
# several times slower from oneDNN than as one matrix product and a col2im (``F.fold``) on
# CPU. Training never needs that gradient (nothing comes before the stem); every attack step
# does. Measured on the 2-core development CPU (channels-last gradients), oneDNN vs matmul+fold:
# 1 -> 32 channels, 3x3, 28x28, batch 10: 503 vs 139 us; 3 -> 64, 3x3, 32x32, batch 128:
# 20.4 vs 10.4 ms; 3 -> 64, 7x7 stride 2, 224x224, batch 8: 56 vs 35 ms.
STEM_CHANNELS = 4


class _StemConv2d(torch.autograd.Function):
    """conv2d whose backward returns the input gradient only, as W^T @ grad then col2im."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride, padding, dilation) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.geometry = (tuple(x.shape[-2:]), weight.shape[-2:], stride, padding, dilation)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (weight,) = ctx.saved_tensors
        size, kernel, stride, padding, dilation = ctx.geometry
        # (C_in * kh * kw, C_out) @ (N, C_out, L) -> (N, C_in * kh * kw, L): every kernel tap's
        # contribution at every output position; fold sums them back onto the input grid.
        columns = torch.matmul(weight.reshape(weight.shape[0], -1).t(), grad_output.flatten(2))
        grad_x = F.fold(columns, size, kernel, dilation=dilation, padding=padding, stride=stride)
        return grad_x, None, None, None, None, None


class FoldedLayer(nn.Module):
    """A linear or convolution layer with the eval-mode BatchNorm after it absorbed.

    The folded weight and bias are computed once, from the layers' current values, and are
    plain tensors (no gradient): the attack differentiates with respect to the input only.
    The original layers are kept (unregistered) for inputs the fold does not cover. A CPU
    stem convolution (at most ``STEM_CHANNELS`` input channels) computes its input gradient
    as a matrix product and a col2im instead of through oneDNN.
    """

    def __init__(self, layer: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        with torch.no_grad():
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale
            if norm.bias is not None:
                shift = shift + norm.bias
            weight = layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
            bias = shift if layer.bias is None else layer.bias * scale + shift
        self.weight = weight.detach()
        self.bias = bias.detach()
        # Plain attributes (object.__setattr__) so the originals are not registered twice.
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "norm", norm)
        self.stem = (
            isinstance(layer, nn.Conv2d)
            and layer.in_channels <= STEM_CHANNELS
            and layer.groups == 1
            and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)
            and layer.weight.device.type == "cpu"
        )

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            if x.dim() != 2:  # BatchNorm1d on (N, C, L) normalises dim 1, not the features
                return self.norm(layer(x))
            return F.linear(x, self.weight, self.bias)
        if self.stem and x.dim() == 4 and x.requires_grad:
            return _StemConv2d.apply(x, self.weight, self.bias, layer.stride, layer.padding, layer.dilation)
        return layer._conv_forward(x, self.weight, self.bias)


def _stock(module: nn.Module, types: tuple[type[nn.Module], ...]) -> bool:
    """An instance of one of ``types`` that uses that type's own ``forward`` (not a patched one)."""
    if "forward" in vars(module):
        return False
    return any(isinstance(module, kind) and type(module).forward is kind.forward for kind in types)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _foldable(layer: nn.Module | None, norm: nn.Module | None, occurrences: Counter) -> bool:
    if layer is None or norm is None:
        return False
    if not (_stock(layer, _FOLDABLE_LAYERS) and _stock(norm, _BATCHNORMS)):
        return False
    if norm.training or norm.running_mean is None or norm.running_var is None:
        return False  # batch statistics: not a fixed affine map
    out_features = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if norm.num_features != out_features:
        return False
    if _hooked(layer) or _hooked(norm):
        return False
    return occurrences[id(layer)] == 1 and occurrences[id(norm)] == 1


def _candidate_pairs(module: nn.Module) -> Iterator[tuple[str, str]]:
    """(layer key, norm key) pairs of ``module``'s children whose data flow is known."""
    if "forward" in vars(module):  # forward replaced on the instance: data flow unknown
        return
    if _stock(module, (nn.Sequential,)):
        keys = list(module._modules)
        yield from zip(keys, keys[1:])
    # Exact types only: a subclass may route its data differently.
    yield from _known_layouts().get(type(module), ())


def foldable_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, layer key, norm key) for every pair ``folded_batchnorm`` would fold."""
    occurrences = Counter(id(module) for _, module in model.named_modules(remove_duplicate=False))
    pairs = []
    for parent in model.modules():
        used: set[str] = set()
        for layer_key, norm_key in _candidate_pairs(parent):
            if layer_key in used or norm_key in used:
                continue
            children = parent._modules
            if _foldable(children.get(layer_key), children.get(norm_key), occurrences):
                pairs.append((parent, layer_key, norm_key))
                used.update((layer_key, norm_key))
    return pairs


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module) -> Iterator[int]:
    """Inside: every foldable (layer, BatchNorm) pair of ``model`` runs as one folded layer.

    Yields the number of pairs folded. Call it with the model already in eval mode (the
    attack does so through ``frozen_for_attack``); a BatchNorm in training mode is left alone.
    """
    originals = [
        (parent, layer_key, norm_key, parent._modules[layer_key], parent._modules[norm_key])
        for parent, layer_key, norm_key in foldable_pairs(model)
    ]
    try:
        for parent, layer_key, norm_key, layer, norm in originals:
            parent._modules[layer_key] = FoldedLayer(layer, norm)
            parent._modules[norm_key] = nn.Identity()
        yield len(originals)
    finally:
        for parent, layer_key, norm_key, layer, norm in originals:
            parent._modules[layer_key] = layer
            parent._modules[norm_key] = norm
