"""The quantizable FP32 rewrite of a NeMo QuartzNet/Jasper CTC model.

NeMo's `MaskedConv1d` masks padded frames on every call, which blocks eager fusion, FX tracing
and `torch.export`. For one utterance at a time (batch 1, features trimmed to the valid frames)
the masks are all ones, so the same network can be written with plain modules:

    QuantStub -> blocks -> decoder Conv1d -> DeQuantStub -> log_softmax (FP32)

Each JasperBlock becomes a list of `ConvUnit`s (Conv1d with its BatchNorm folded in, then an
optional ReLU) plus residual `ConvUnit`s whose sum goes through `FloatFunctional` so eager
quantization can observe and quantize the adds. The module is rebuilt from a JSON-able spec plus a
state dict, so the artifact needs no pickled classes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

from nemo_ptq.errors import UnsupportedModelError

SPEC_FILE = "fused_spec.json"
WEIGHTS_FILE = "fused_weights.pt"


@dataclass(frozen=True)
class ConvSpec:
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    relu: bool = False


@dataclass(frozen=True)
class BlockSpec:
    body: list[ConvSpec]
    residuals: list[ConvSpec] = field(default_factory=list)  # one per residual pane
    dense: bool = False  # Jasper "dense residual": the block passes all earlier outputs on

    @classmethod
    def from_json(cls, data: dict) -> "BlockSpec":
        return cls(
            body=[ConvSpec(**c) for c in data["body"]],
            residuals=[ConvSpec(**c) for c in data["residuals"]],
            dense=data["dense"],
        )


@dataclass(frozen=True)
class FusedSpec:
    blocks: list[BlockSpec]
    decoder: ConvSpec

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "FusedSpec":
        return cls(blocks=[BlockSpec.from_json(b) for b in data["blocks"]], decoder=ConvSpec(**data["decoder"]))


class ConvUnit(nn.Module):
    """Conv1d (BatchNorm folded in) followed by ReLU or nothing: the unit eager fusion expects."""

    def __init__(self, spec: ConvSpec):
        super().__init__()
        self.conv = nn.Conv1d(
            spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
            dilation=spec.dilation, padding=spec.padding, groups=spec.groups, bias=spec.bias,
        )
        self.relu = nn.ReLU() if spec.relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))

    def masked(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit on a padded batch: frames at or past `lengths` are zeroed before a conv that
        mixes frames, exactly as NeMo's MaskedConv1d does; returns the output and its lengths."""
        if self.conv.kernel_size[-1] > 1:
            x = x * time_mask(lengths, x).to(x.dtype)
        return self(x), conv_output_lengths(self.conv, lengths)


def time_mask(lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 for the valid frames of `x` ([B, C, T] or [B, C, 1, T]), broadcastable to it."""
    valid = torch.arange(x.shape[-1], device=lengths.device)[None, :] < lengths[:, None]
    return valid.reshape(valid.shape[0], *([1] * (x.dim() - 2)), valid.shape[1])


def conv_output_lengths(conv: nn.Module, lengths: torch.Tensor) -> torch.Tensor:
    """Valid output frames of a conv (1-D, or 2-D over a height-1 axis) for `lengths` input frames."""
    kernel, stride, padding, dilation = (getattr(conv, name)[-1] for name in
                                         ("kernel_size", "stride", "padding", "dilation"))
    if stride == 1 and 2 * padding == dilation * (kernel - 1):
        return lengths
    # floor((L + 2p - d(k-1) - 1) / s) + 1 as one subtraction: PT2E's quantizer would take an add on
    # lengths for part of a quantizable add pattern (and reject the model).
    offset = 2 * padding - dilation * (kernel - 1) - 1 + stride
    return torch.div(lengths - (-offset), stride, rounding_mode="floor")


class FusedBlock(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.dense = spec.dense
        self.body = nn.Sequential(*(ConvUnit(c) for c in spec.body))
        self.residuals = nn.ModuleList(ConvUnit(c) for c in spec.residuals)
        # The last residual add carries the block's ReLU (quantized add_relu is one kernel).
        self.adds = nn.ModuleList(FloatFunctional() for _ in spec.residuals)

    def forward(self, xs: list[torch.Tensor], lengths: torch.Tensor | None = None):
        """The block's outputs; with `lengths`, masked (see `masked`) and returned with the output lengths.
        Called, not `masked` directly, so that an ONNX export scopes the block's nodes by its name."""
        if lengths is not None:
            return self.masked(xs, lengths)
        return self._residual_sum(xs, self.body(xs[-1]), [residual(x) for residual, x in zip(self.residuals, xs)])

    def masked(self, xs: list[torch.Tensor], lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The block on a padded batch, `lengths` valid frames per row; returns its output lengths."""
        out, out_lengths = xs[-1], lengths
        for unit in self.body:
            out, out_lengths = unit.masked(out, out_lengths)
        residuals = [residual.masked(x, lengths)[0] for residual, x in zip(self.residuals, xs)]
        return self._residual_sum(xs, out, residuals), out_lengths

    def _residual_sum(self, xs: list[torch.Tensor], out: torch.Tensor, residuals: list[torch.Tensor]):
        last = len(residuals) - 1
        for i, (res, add) in enumerate(zip(residuals, self.adds)):
            out = add.add_relu(out, res) if i == last else add.add(out, res)
        return xs + [out] if self.dense else [out]

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for unit in self.body:
            lengths = conv_output_lengths(unit.conv, lengths)
        return lengths


class FusedCTC(nn.Module):
    """features [B, feature_dim, frames] -> log-probs [B, frames', vocabulary + 1]."""

    def __init__(self, spec: FusedSpec):
        super().__init__()
        self.spec = spec
        self.quant = QuantStub()
        self.blocks = nn.ModuleList(FusedBlock(b) for b in spec.blocks)
        self.decoder = nn.Conv1d(spec.decoder.in_channels, spec.decoder.out_channels, 1, bias=True)
        self.dequant = DeQuantStub()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        xs = [self.quant(features)]
        for block in self.blocks:
            xs = block(xs)
        return self.decoder(self.dequant(xs[-1]))

    def masked_logits(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of a zero-padded batch with `lengths` valid frames per row, masked as NeMo does, so
        each row's valid output frames equal that row run alone; returns them with their lengths."""
        xs = [self.quant(features)]
        for block in self.blocks:
            xs, lengths = block(xs, lengths)
        return self.decoder(self.dequant(xs[-1])), lengths

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            lengths = block.output_lengths(lengths)
        return lengths

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(features).transpose(1, 2).float(), dim=-1)

    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / SPEC_FILE).write_text(json.dumps(self.spec.to_json(), indent=1) + "\n")
        torch.save(self.state_dict(), out_dir / WEIGHTS_FILE)

    @classmethod
    def load(cls, out_dir: Path) -> "FusedCTC":
        out_dir = Path(out_dir)
        spec = FusedSpec.from_json(json.loads((out_dir / SPEC_FILE).read_text()))
        model = cls(spec)
        model.load_state_dict(torch.load(out_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        return model.eval()


def conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every convolution of the model by qualified name, in forward order."""
    return {name: m for name, m in model.named_modules() if "Conv" in type(m).__name__ and hasattr(m, "weight")}


# ---- the rewrite from NeMo ------------------------------------------------------------------

def _fold(conv: nn.Conv1d, bn: nn.BatchNorm1d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = conv.weight.detach().clone()
    bias = conv.bias.detach().clone() if conv.bias is not None else None
    if bn is None:
        return weight, bias
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    weight = weight * scale[:, None, None]
    bias = shift if bias is None else bias * scale + shift
    return weight, bias


def _conv_spec(conv: nn.Conv1d, *, bias: bool, relu: bool) -> ConvSpec:
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise UnsupportedModelError(f"convolution {conv} uses padding {conv.padding!r}/{conv.padding_mode}")
    return ConvSpec(
        in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size[0],
        stride=conv.stride[0], dilation=conv.dilation[0], padding=conv.padding[0], groups=conv.groups,
        bias=bias, relu=relu,
    )


def _split_conv_bn(layers: list[nn.Module], where: str) -> list[tuple[list[nn.Conv1d], nn.BatchNorm1d, bool]]:
    """Group a JasperBlock's `mconv` list into (convs, batchnorm, followed_by_relu) sub-blocks."""
    from nemo.collections.asr.parts.submodules.jasper import MaskedConv1d

    groups, convs, bn = [], [], None
    for layer in layers:
        if isinstance(layer, MaskedConv1d):
            if layer.heads != -1 or getattr(layer, "pad_layer", None) is not None:
                raise UnsupportedModelError(f"{where}: multi-head or asymmetric-padding convs are not supported")
            convs.append(layer.conv)
        elif isinstance(layer, nn.Conv1d):
            convs.append(layer)
        elif isinstance(layer, nn.BatchNorm1d):
            bn = layer
        elif isinstance(layer, nn.ReLU):
            groups.append((convs, bn, True))
            convs, bn = [], None
        elif isinstance(layer, nn.Dropout):
            continue
        else:
            raise UnsupportedModelError(
                f"{where}: layer {type(layer).__name__} has no quantizable rewrite (supported: "
                "QuartzNet/Jasper blocks with BatchNorm and ReLU; use an export-based backend for others)"
            )
    if convs:
        groups.append((convs, bn, False))
    for convs_, bn_, _ in groups:
        if bn_ is None or not convs_:
            raise UnsupportedModelError(f"{where}: expected conv(s) followed by BatchNorm1d in every sub-block")
    return groups


def _units(convs: list[nn.Conv1d], bn: nn.BatchNorm1d, relu: bool) -> tuple[list[ConvSpec], list[tuple]]:
    """Specs and (weight, bias) for a sub-block: BN folds into its last conv; ReLU follows it."""
    specs, weights = [], []
    for i, conv in enumerate(convs):
        last = i == len(convs) - 1
        w, b = _fold(conv, bn if last else None)
        specs.append(_conv_spec(conv, bias=b is not None, relu=relu and last))
        weights.append((w, b))
    return specs, weights


def rewrite(model: Any) -> FusedCTC:
    """Build the FusedCTC equivalent of a NeMo ConvASREncoder/ConvASRDecoder CTC model."""
    from nemo.collections.asr.modules import ConvASRDecoder, ConvASREncoder

    encoder, decoder = model.encoder, model.decoder
    if type(encoder) is not ConvASREncoder or type(decoder) is not ConvASRDecoder:
        raise UnsupportedModelError(
            f"the eager rewrite handles ConvASREncoder + ConvASRDecoder (QuartzNet/Jasper), not "
            f"{type(encoder).__name__} + {type(decoder).__name__}; use an export-based backend"
        )
    block_specs, weights = [], []
    for index, block in enumerate(encoder.encoder):
        where = f"encoder block {index}"
        if getattr(block, "se", False) or block.residual_mode != "add":
            raise UnsupportedModelError(f"{where}: squeeze-excite or residual mode {block.residual_mode!r} unsupported")
        if not isinstance(block.mout[0], nn.ReLU):
            raise UnsupportedModelError(f"{where}: activation {type(block.mout[0]).__name__} (only ReLU is supported)")
        groups = _split_conv_bn(list(block.mconv), where)
        body, body_w = [], []
        for g, (convs, bn, relu) in enumerate(groups):
            # The block's last sub-block gets its ReLU from `mout` unless a residual add takes it.
            last = g == len(groups) - 1
            specs, w = _units(convs, bn, relu or (last and block.res is None))
            body += specs
            body_w += w
        residuals, res_w = [], []
        for pane in block.res or []:
            (convs, bn, _), = _split_conv_bn(list(pane), f"{where} residual")
            specs, w = _units(convs, bn, relu=False)
            residuals += specs
            res_w += w
        block_specs.append(BlockSpec(body=body, residuals=residuals, dense=bool(block.res is not None and block.dense_residual)))
        weights.append((body_w, res_w))

    dec_conv = decoder.decoder_layers[0]
    dec_w, dec_b = _fold(dec_conv, None)
    spec = FusedSpec(blocks=block_specs, decoder=_conv_spec(dec_conv, bias=True, relu=False))
    fused = FusedCTC(spec)
    with torch.no_grad():
        for fblock, (body_w, res_w) in zip(fused.blocks, weights):
            for unit, (w, b) in zip(fblock.body, body_w):
                _assign(unit.conv, w, b)
            for unit, (w, b) in zip(fblock.residuals, res_w):
                _assign(unit.conv, w, b)
        _assign(fused.decoder, dec_w, dec_b if dec_b is not None else torch.zeros(dec_w.shape[0]))
    return fused.eval()


def _assign(conv: nn.Conv1d, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    conv.weight.copy_(weight)
    if bias is not None:
        conv.bias.copy_(bias)
