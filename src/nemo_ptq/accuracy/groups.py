"""Layer groups: the units that sensitivity measures and the search keeps in float.

A depthwise conv and the layer that follows it in the forward pass (its pointwise conv, in
QuartzNet, Citrinet and Conformer conv modules alike) form one group: together they are one
separable convolution, and keeping both float leaves the tensor between them float, which every
runtime keeps float (onnxruntime re-quantizes a lone float layer between two 8-bit tensors).
Every other weight layer is a group of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from nemo_ptq.models.layers import WeightLayer


@dataclass(frozen=True)
class LayerGroup:
    name: str  # the first layer's module path
    layers: tuple[str, ...]  # FP32 module paths, in forward order
    macs: int


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups > 1 and module.groups == module.in_channels


def layer_groups(model: nn.Module, table: Mapping[str, WeightLayer], skip: frozenset[str] = frozenset()) -> list[LayerGroup]:
    """The table's layers (forward order) in groups; layers in `skip` (already float) in none."""
    modules = dict(model.named_modules())
    paths = [path for path in table if path not in skip]
    groups, i = [], 0
    while i < len(paths):
        members = paths[i:i + 2] if is_depthwise(modules[paths[i]]) and i + 1 < len(paths) else paths[i:i + 1]
        groups.append(LayerGroup(members[0], tuple(members), sum(table[p].macs for p in members)))
        i += len(members)
    return groups
