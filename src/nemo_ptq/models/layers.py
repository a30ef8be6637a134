"""The weight layers of an FP32 model and their multiply-accumulates: one table per model, keyed by
PyTorch module path, that every backend maps to its own layer names.

Coverage figures (how much of a model runs in INT8) are counted over this table, so they mean the
same on every backend: the layers are the Conv1d, Conv2d and Linear modules that the model's
forward calls, and their MACs are counted once, from one FP32 forward. Products of two
activations (attention scores) have no weights and are not in the table.

Each backend names the layers differently (ONNX node names, OpenVINO ops, PT2E graph nodes,
eager modules); it records those names in `runtime_names` and reads precisions by them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

MAC_FRAMES = 1000  # input feature frames the MACs are counted for (10 s at 10 ms)
WEIGHT_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class WeightLayer:
    kind: str  # the module type: Conv1d | Conv2d | Linear
    macs: int  # multiply-accumulates for MAC_FRAMES input frames
    runtime_names: tuple[str, ...] = ()  # what the backend calls this layer (usually one name)


LayerTable = dict[str, WeightLayer]  # FP32 module path -> layer, in forward order


def weight_layers(model: nn.Module, features: int, frames: int = MAC_FRAMES) -> LayerTable:
    """Every weight layer that the model's forward runs, with its MACs, from one forward pass."""
    macs: dict[str, int] = {}
    kinds = {}
    hooks = []
    for path, module in model.named_modules():
        if isinstance(module, WEIGHT_MODULES):
            def hook(mod, _inputs, output, path=path):
                per_output = mod.in_features if isinstance(mod, nn.Linear) else mod.weight[0].numel()
                macs[path] = macs.get(path, 0) + int(output.numel()) * per_output
            kinds[path] = type(module).__name__
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, features, frames))
    finally:
        for handle in hooks:
            handle.remove()
    return {path: WeightLayer(kinds[path], count) for path, count in macs.items()}


def with_runtime_names(table: LayerTable, names: Mapping[str, Sequence[str]]) -> LayerTable:
    """The table with each layer's backend names (module path -> names); unnamed layers get none."""
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"runtime names for layers the FP32 model lacks: {', '.join(unknown[:3])}")
    return {path: replace(layer, runtime_names=tuple(names.get(path, ()))) for path, layer in table.items()}


def module_precisions(table: LayerTable, runtime: Mapping[str, str]) -> dict[str, str]:
    """Precision of each layer from the precisions of its runtime layers: int8 when all of them
    run in int8, else the first other precision; `absent` when the backend has no layer for it."""
    precisions = {}
    for path, layer in table.items():
        found = [runtime.get(name, "unknown") for name in layer.runtime_names]
        precisions[path] = "absent" if not found else next((p for p in found if p != "int8"), "int8")
    return precisions


def save_table(path: Path, table: LayerTable, extra: Mapping | None = None) -> None:
    layers = {name: {**asdict(layer), "runtime_names": list(layer.runtime_names)} for name, layer in table.items()}
    Path(path).write_text(json.dumps({"layers": layers, **dict(extra or {})}, indent=1) + "\n")


def load_table(path: Path) -> tuple[LayerTable, dict]:
    """The table and whatever else the file holds (e.g. precisions known at quantize time)."""
    data = json.loads(Path(path).read_text())
    layers = data.pop("layers")
    table = {name: WeightLayer(layer["kind"], int(layer["macs"]), tuple(layer["runtime_names"]))
             for name, layer in layers.items()}
    return table, data


def scope_path(scope: Iterable[str], known: Iterable[str]) -> str | None:
    """The module path of a TorchScript-exported ONNX node from its scope (the node name's parts
    before the op, e.g. `encoder`, `encoder`, `encoder.0`, `mconv.0`, `conv`), or None when it
    names no layer in `known`. A called module adds its attribute name; a child of a container
    adds `container.index`, where the container itself appears only if it was called
    (Sequential) and not if it was not (ModuleList): both readings are tried."""
    known = set(known)
    paths = [""]
    for part in scope:
        head, dot, index = part.partition(".")
        extended = set()
        for path in paths:
            extended.add(f"{path}.{part}" if path else part)
            if dot and path.rpartition(".")[2] == head:
                extended.add(f"{path}.{index}")
        paths = sorted(extended)
    matches = [path for path in paths if path in known]
    return matches[0] if len(matches) == 1 else None
