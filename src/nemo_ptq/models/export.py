"""ONNX export of the FP32 model, shared by the ONNX Runtime and OpenVINO backends.

The exported graph maps audio_signal [batch, feature_dim, frames] (log-mel features) ->
logprobs [batch, frames', vocab + 1] with dynamic batch and time axes; the names are those of
NeMo's own ONNX export. For `FusedCTC` the QuantStub/DeQuantStub are identities in FP32; for
`NemoCTC` NeMo's masking is already off. A deployable model also takes `length` [batch] (int64)
as its second input, as sherpa-onnx's NeMo CTC runtime feeds it; masking is off, so it is unused,
except in the masked export of the QuartzNet/Jasper rewrite (`masked=True`), which zeroes each
row's frames past `length` before every conv that mixes frames, as NeMo's MaskedConv1d does, so a
padded batch gives each row the output it has alone.
Besides the graph, a deployment needs the vocabulary (`tokens.txt`, sherpa-onnx style) and the
feature settings (ONNX `metadata_props`, with sherpa-onnx's keys), taken from the model card.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from nemo_ptq.errors import UnsupportedModelError
from nemo_ptq.models.layers import scope_path

INPUT = "audio_signal"
LENGTH = "length"
OUTPUT = "logprobs"
OPSET = 17
BLANK_TOKEN = "<blk>"
# Ops whose weight is a constant: the layers whose precision decides speed and size.
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
MAX_FRAMES = 1 << 14  # longest input (feature frames, 164 s at 10 ms) an exported graph must take


def feature_dim(module: nn.Module, card: Mapping[str, Any] | None = None) -> int:
    """Input feature channels: from the card if present, else from the model itself."""
    if card and card.get("feature_dim"):
        return int(card["feature_dim"])
    encoder = getattr(module, "encoder", None)
    if encoder is not None and hasattr(encoder, "_feat_in"):
        return int(encoder._feat_in)
    first_conv = next((m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))), None)
    if first_conv is None:
        raise UnsupportedModelError(f"cannot tell the feature dimension of {type(module).__name__}: add it to the card")
    return first_conv.in_channels


def grow_length_caches(module: nn.Module, frames: int = MAX_FRAMES) -> None:
    """NeMo's ConvASREncoder caches arange(max length) for its squeeze-excite masks and grows it
    only in Python; a graph traced on a short example keeps the short cache and fails on longer
    inputs. Grow it to `frames` before tracing (harmless for models without one)."""
    encoder = getattr(module, "encoder", None)
    if hasattr(encoder, "update_max_sequence_length"):
        encoder.update_max_sequence_length(seq_length=frames, device=torch.device("cpu"))


MASKED_SCOPE = "model"  # MaskedLogProbs' attribute holding the rewrite: the first part of its nodes' scopes


class MaskedLogProbs(nn.Module):
    """A QuartzNet/Jasper rewrite with its padding masked: (features, length) -> log-probs."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        if not hasattr(fused, "masked_logits"):
            raise UnsupportedModelError(f"masking padding in the exported graph needs the QuartzNet/Jasper rewrite, "
                                        f"which {type(fused).__name__} is not: set mask_padding: false")
        self.model = fused

    def forward(self, features: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model.masked_logits(features, length)
        return torch.log_softmax(logits.transpose(1, 2).float(), dim=-1)


def export_onnx(module: nn.Module, path: Path, features: int, example_frames: int = 200,
                masked: bool = False) -> Path:
    """Export to ONNX (TorchScript exporter: the dynamo one needs onnxscript, not installed);
    `masked`: the rewrite with its `length` input masking the padding (MaskedLogProbs)."""
    grow_length_caches(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if masked:  # a batch of two lengths, so no shape is traced as a constant
        module = MaskedLogProbs(module)
        example = (torch.randn(2, features, example_frames), torch.tensor([example_frames, example_frames * 3 // 4]))
        names, axes = [INPUT, LENGTH], {INPUT: {0: "batch", 2: "frames"}, LENGTH: {0: "batch"}}
    else:
        example, names, axes = (torch.randn(1, features, example_frames),), [INPUT], {INPUT: {0: "batch", 2: "frames"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), example, str(path), dynamo=False, opset_version=OPSET,
            input_names=names, output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: {0: "batch", 1: "out_frames"}},
        )
    model = onnx.load(str(path))
    _inline_shared_initializers(model)
    onnx.save(model, str(path))
    return path


def add_length_input(model: onnx.ModelProto) -> None:
    """Declare the `length` input that sherpa-onnx-style runtimes feed after the features."""
    if any(graph_input.name == LENGTH for graph_input in model.graph.input):
        return
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    dims = [batch.dim_param or batch.dim_value]
    model.graph.input.append(onnx.helper.make_tensor_value_info(LENGTH, onnx.TensorProto.INT64, dims))


def deployment_feed(features: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of a deployable graph for a batch of equal-length feature arrays."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    return {INPUT: features, LENGTH: np.full(features.shape[0], features.shape[-1], dtype=np.int64)}


def _inline_shared_initializers(model: onnx.ModelProto) -> None:
    """The exporter stores equal constants once and feeds the copies through Identity nodes;
    quantizers then see a computed bias instead of an initializer and skip that conv."""
    initializers = {init.name: init for init in model.graph.initializer}
    graph_outputs = {out.name for out in model.graph.output}
    for node in list(model.graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in graph_outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            model.graph.node.remove(node)


def onnx_layer_names(model: onnx.ModelProto, layers: Iterable[str]) -> dict[str, list[str]]:
    """The Conv/MatMul/Gemm nodes of an exported model by the module path (in `layers`, the FP32
    model's weight-layer table) whose forward emitted them, read from each node's scope name
    (less MaskedLogProbs' own scope in a masked export)."""
    names: dict[str, list[str]] = {}
    masked = any(graph_input.name == LENGTH for graph_input in model.graph.input)
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS:
            scope = node.name.strip("/").split("/")[:-1]
            path = scope_path(scope[1:] if masked and scope[:1] == [MASKED_SCOPE] else scope, layers)
            if path is not None:
                names.setdefault(path, []).append(node.name)
    return names


def deployment_metadata(card: Mapping[str, Any]) -> dict[str, str]:
    """What a runtime needs besides the graph to turn audio into text (from the model card)."""
    vocabulary = list(card.get("vocabulary", []))
    meta = {
        "model_type": str(card.get("class", "EncDecCTCModel")),
        "vocab_size": str(len(vocabulary) + 1),  # including the CTC blank
        "blank_id": str(card.get("blank_id", len(vocabulary))),
        "tokenizer": str(card.get("tokenizer", "")),
        "subsampling_factor": str(card.get("subsampling_factor", "")),
        "sample_rate": str(card.get("sample_rate", "")),
        "feature_dim": str(card.get("feature_dim", "")),
        # sherpa-onnx reads this key and normalizes its features accordingly.
        "normalize_type": str(dict(card.get("preprocessor", {})).get("normalize", "")),
        "input_layout": f"{INPUT}[batch, feature_dim, frames] float32 log-mel, {LENGTH}[batch] int64 "
                        f"(unused: no masking); output {OUTPUT}[batch, frames', vocab_size]",
    }
    # Feature-extractor settings, when the card carries NeMo's preprocessor config.
    for key, value in dict(card.get("preprocessor", {})).items():
        if key != "_target_":
            meta[f"preprocessor.{key}"] = str(value)
    return {key: value for key, value in meta.items() if value != ""}


def add_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def write_tokens(path: Path, card: Mapping[str, Any]) -> None:
    """sherpa-onnx style `<token> <id>` lines; the blank is the last id. Spaces become `▁`."""
    vocabulary = [token.replace(" ", "\u2581") for token in card.get("vocabulary", [])]
    lines = [f"{token} {i}" for i, token in enumerate(vocabulary)]
    lines.append(f"{BLANK_TOKEN} {int(card.get('blank_id', len(vocabulary)))}")
    Path(path).write_text("\n".join(lines) + "\n")
