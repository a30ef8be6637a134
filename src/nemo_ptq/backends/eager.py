"""PyTorch eager-mode static quantization (torch.ao.quantization) on the fused QuartzNet rewrite.

The engine decides which kernels run the INT8 convs: on AVX-512 VNNI CPUs `onednn` is fast,
while `x86`/`fbgemm` are very slow on depthwise Conv1d and `qnnpack` targets ARM. The artifact is
the quantized state dict plus the rewrite's spec (smaller than TorchScript, whose per-module
packed parameters add about 4 %); loading rebuilds the quantized module from the spec. The CTC
decoder (1x1 conv, under 1 % of the MACs) stays float, so the logits are not rounded to 8 bits.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.ao import quantization as tq

from nemo_ptq.backends.base import ArtifactInfo, Backend, register, torch_threads
from nemo_ptq.backends.calibration import CalibrationSample
from nemo_ptq.config import check_choices, check_flags
from nemo_ptq.errors import BackendUnavailableError, UnsupportedModelError
from nemo_ptq.models.fused import SPEC_FILE, ConvUnit, FusedCTC, FusedSpec, conv_layers

ENGINES = ("onednn", "x86", "fbgemm", "qnnpack")
OBSERVERS = {
    "minmax": tq.MinMaxObserver,
    "moving_average_minmax": tq.MovingAverageMinMaxObserver,
    "histogram": tq.HistogramObserver,
}
OBSERVER_STATE = "observers.pt"
RANGES = "ranges.json"
MODEL = "model.int8.pt"


@dataclass(frozen=True)
class EagerCalibration(CalibrationSample):
    observer: str = "histogram"  # activation observer: minmax | moving_average_minmax | histogram
    per_channel: bool = True  # weights: per output channel (symmetric) or per tensor
    reduce_range: bool = False  # 7-bit activations, for CPUs without VNNI (overflow safety)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"observer": OBSERVERS})
        check_flags(self, ("per_channel", "reduce_range"))


@dataclass(frozen=True)
class EagerConfig:
    engine: str
    calibration: EagerCalibration = field(default_factory=EagerCalibration)

    def __post_init__(self) -> None:
        check_choices(self, {"engine": ENGINES})
        if self.engine == "qnnpack" and self.calibration.reduce_range:
            raise ValueError("qnnpack uses full-range activations; set calibration.reduce_range: false")


@contextmanager
def _engine(engine: str) -> Iterator[None]:
    """torch's quantized engine is process-wide (it picks the kernels that pack and run INT8
    weights): `engine` inside the block, the caller's after."""
    if engine not in torch.backends.quantized.supported_engines:
        raise BackendUnavailableError(
            f"quantized engine {engine!r} is not in this torch build "
            f"(available: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _in_engine(method):
    """A Backend method that runs with the variant's quantized engine (see `_engine`)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with _engine(self.config.engine):
            return method(self, *args, **kwargs)
    return wrapper


@register
class EagerBackend(Backend):
    name = "eager"
    config_class = EagerConfig

    def _prepared(self, fused: FusedCTC) -> nn.Module:
        """Fuse Conv+ReLU pairs, attach observers: the model calibration runs through."""
        if not isinstance(fused, FusedCTC):
            raise UnsupportedModelError(
                "the eager backend quantizes the QuartzNet/Jasper rewrite only; the fuse stage found "
                "none for this model (see data/fused/fp32_kind.json): use an export-based backend"
            )
        cal = self.config.calibration
        pairs = [[f"{n}.conv", f"{n}.relu"] for n, m in fused.named_modules()
                 if isinstance(m, ConvUnit) and isinstance(m.relu, nn.ReLU)]
        model = tq.fuse_modules(_copy(fused), pairs)
        if cal.per_channel:
            weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        else:
            weight = tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        activation = OBSERVERS[cal.observer].with_args(dtype=torch.quint8, reduce_range=cal.reduce_range)
        model.qconfig = tq.QConfig(activation=activation, weight=weight)
        model.decoder.qconfig = None  # float CTC logits: 8-bit ones flip the argmax of near-tied frames
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tq.prepare(model)

    @_in_engine
    def calibrate(self, fused: FusedCTC, features: Iterable[np.ndarray], out_dir: Path) -> None:
        model = self._prepared(fused)
        with torch.inference_mode():
            for feats in features:
                model(torch.from_numpy(feats)[None])
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out_dir / OBSERVER_STATE)
        (out_dir / RANGES).write_text(json.dumps(_observed_ranges(model), indent=1) + "\n")
        self.save_config(out_dir)

    @_in_engine
    def quantize(self, fused: FusedCTC, calibration_dir: Path, out_dir: Path) -> None:
        model = self._prepared(fused)
        state = torch.load(calibration_dir / OBSERVER_STATE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        quantized = _convert(model)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(_compact(quantized.state_dict()), out_dir / MODEL)
        (out_dir / SPEC_FILE).write_text(json.dumps(fused.spec.to_json()) + "\n")
        precisions = {name: _precision(m) for name, m in conv_layers(quantized).items()}
        macs = _conv_macs(fused)
        (out_dir / "layers.json").write_text(json.dumps({"precisions": precisions, "macs": macs}, indent=1) + "\n")
        self.save_config(out_dir)

    @_in_engine
    def load(self, artifact_dir: Path, threads: int):
        spec = FusedSpec.from_json(json.loads((artifact_dir / SPEC_FILE).read_text()))
        module = _convert(self._prepared(FusedCTC(spec)))
        module.load_state_dict(_expanded(torch.load(artifact_dir / MODEL, map_location="cpu", weights_only=True)))

        def run(features: np.ndarray) -> np.ndarray:
            with _engine(self.config.engine), torch_threads(threads), torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()

        return run

    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        layers = json.loads((artifact_dir / "layers.json").read_text())
        return ArtifactInfo.from_layers(
            layers["precisions"], layers["macs"],
            size_bytes=sum((artifact_dir / name).stat().st_size for name in (MODEL, SPEC_FILE)),
            notes=f"torch eager, engine {self.config.engine}",
        )


def _compact(state: dict) -> dict:
    """The quantized state dict with each per-channel INT8 weight stored as its int8 values and
    scales: symmetric weights have all-zero zero points, which torch would store as int64 per
    output channel (0.5 MB for QuartzNet 15x5)."""
    weights, rest = {}, {}
    for key, value in state.items():
        if (isinstance(value, torch.Tensor) and value.is_quantized and value.qscheme() == torch.per_channel_affine
                and not value.q_per_channel_zero_points().any()):
            weights[key] = {"int8": value.int_repr(), "scales": value.q_per_channel_scales(),
                            "axis": value.q_per_channel_axis()}
        else:
            rest[key] = value
    return {"state": rest, "symmetric_per_channel_weights": weights}


def _expanded(saved: dict) -> dict:
    state = dict(saved["state"])
    for key, weight in saved["symmetric_per_channel_weights"].items():
        zero_points = torch.zeros(weight["scales"].shape, dtype=torch.int64)
        state[key] = torch._make_per_channel_quantized_tensor(weight["int8"], weight["scales"], zero_points,
                                                              weight["axis"])
    return state


def _convert(prepared: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncalibrated observers when rebuilding for load
        return tq.convert(prepared.eval())


def _copy(fused: FusedCTC) -> FusedCTC:
    clone = FusedCTC(fused.spec)
    clone.load_state_dict(fused.state_dict())
    return clone.eval()


def _precision(module: nn.Module) -> str:
    return "int8" if "quantized" in type(module).__module__ else "fp32"


def _conv_macs(fused: FusedCTC, frames: int = 1000) -> dict[str, int]:
    """Multiply-accumulates per conv for `frames` input frames (keys match the quantized names)."""
    macs, length = {}, frames
    names = {id(m): n for n, m in fused.named_modules()}
    for block in fused.blocks:
        block_in = length
        for unit in block.body:
            c = unit.conv
            length = (length + 2 * c.padding[0] - c.dilation[0] * (c.kernel_size[0] - 1) - 1) // c.stride[0] + 1
            macs[names[id(c)]] = _macs(c, length)
        for unit in block.residuals:
            macs[names[id(unit.conv)]] = _macs(unit.conv, block_in)
    macs["decoder"] = _macs(fused.decoder, length)
    return macs


def _macs(conv: nn.Conv1d, out_frames: int) -> int:
    return conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * out_frames


def _observed_ranges(model: nn.Module) -> dict[str, dict[str, float]]:
    """Activation ranges each observer saw, human-readable (the .pt file is what quantize uses)."""
    ranges = {}
    for name, module in model.named_modules():
        if isinstance(module, tq.ObserverBase) and hasattr(module, "min_val") and module.min_val.numel() == 1:
            scale, zero_point = module.calculate_qparams()
            ranges[name] = {
                "min": float(module.min_val), "max": float(module.max_val),
                "scale": float(scale), "zero_point": int(zero_point),
            }
    return ranges
