"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization") of the QuartzNet/Jasper
rewrite: a function-preserving rescaling of consecutive convs inside each block's body.

Two kinds of neighbours are rescaled, channel by channel, with s_c > 0:
- a depthwise conv and the pointwise conv after it (nothing between them): the depthwise output
  channel c is divided by s_c and the pointwise conv's input column c multiplied by it;
- a conv followed by a ReLU and then a depthwise conv: the conv's output channel c (weights and
  bias) is divided by s_c, the depthwise channel c multiplied by it (ReLU(x / s) = ReLU(x) / s).

s_c = sqrt(r1_c / r2_c), from the weight range r1_c of the first conv's output channel and r2_c of
the second's input channel, gives both sqrt(r1_c r2_c). A pointwise conv sits in two pairs, so the
passes repeat until the scales settle. A body's last conv feeds a residual add and is not rescaled
on its output side. Padding masks zero frames before a conv and commute with the scales, so the
masked (batched) graph stays equal too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from nemo_ptq.errors import UnsupportedModelError

EQUALIZATIONS = ("none", "cross_layer")
MAX_PASSES = 20
SETTLED = 1e-3  # stop once no scale of a pass is further than this from 1


def _depthwise(conv: nn.Conv1d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def equalizable_pairs(model) -> list[tuple[str, str]]:
    """(first, second) module paths of the ConvUnits that cross-layer equalization rescales."""
    from nemo_ptq.models.fused import FusedCTC

    if not isinstance(model, FusedCTC):
        raise UnsupportedModelError(
            f"equalize: cross_layer rescales the QuartzNet/Jasper rewrite's convs, and this model "
            f"({type(model).__name__}) has none (see data/fused/fp32_kind.json): use equalize: none")
    pairs = []
    for b, block in enumerate(model.blocks):
        units = list(block.body)
        for i, (first, second) in enumerate(zip(units, units[1:])):
            linear_link = isinstance(first.relu, nn.Identity) and _depthwise(first.conv) and second.conv.groups == 1
            relu_link = isinstance(first.relu, nn.ReLU) and _depthwise(second.conv)
            if linear_link or relu_link:
                pairs.append((f"blocks.{b}.body.{i}", f"blocks.{b}.body.{i + 1}"))
    return pairs


def _rescale(first: nn.Conv1d, second: nn.Conv1d) -> float:
    """Equalize one pair in place; returns the largest |log s_c| applied."""
    out_range = first.weight.abs().amax(dim=(1, 2))
    if _depthwise(second):
        in_range = second.weight.abs().amax(dim=(1, 2))
    else:
        in_range = second.weight.abs().amax(dim=(0, 2))
    usable = (out_range > 0) & (in_range > 0)
    scale = torch.where(usable, torch.sqrt(out_range / in_range.clamp_min(1e-30)), torch.ones_like(out_range))
    first.weight.div_(scale[:, None, None])
    if first.bias is not None:
        first.bias.div_(scale)
    if _depthwise(second):
        second.weight.mul_(scale[:, None, None])
    else:
        second.weight.mul_(scale[None, :, None])
    return float(scale.log().abs().max())


def cross_layer_equalized(model):
    """A copy of a FusedCTC with every `equalizable_pairs` pair equalized; the input is untouched."""
    pairs = equalizable_pairs(model)
    equalized = copy.deepcopy(model)
    modules = dict(equalized.named_modules())
    with torch.no_grad():
        for _ in range(MAX_PASSES):
            moved = max((_rescale(modules[a].conv, modules[b].conv) for a, b in pairs), default=0.0)
            if moved < SETTLED:
                break
    return equalized.eval()


def equalized(model, equalize: str):
    """The model a backend calibrates and converts for a config's `equalize` option."""
    return cross_layer_equalized(model) if equalize == "cross_layer" else model
