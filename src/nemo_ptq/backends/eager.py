"""PyTorch eager-mode static quantization (torch.ao.quantization) on the fused QuartzNet rewrite.

The engine decides which kernels run the INT8 convs: on AVX-512 VNNI CPUs `onednn` is fast,
while `x86`/`fbgemm` are very slow on depthwise Conv1d and `qnnpack` targets ARM. Without VNNI
(plain AVX2) the x86 engines saturate on full 8-bit ranges, so `reduce_range: auto` (the default)
takes 7-bit activations there. The artifact is
the quantized state dict plus the rewrite's spec (smaller than TorchScript, whose per-module
packed parameters add about 4 %); loading rebuilds the quantized module from the spec. The CTC
decoder (1x1 conv, under 1 % of the MACs) stays float, so the logits are not rounded to 8 bits.
`float_layers` runs each named conv in float between a dequantize and a quantize whose range is
the one calibration observed at that conv's output (the calibration observes every conv).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.ao import quantization as tq

from nemo_ptq import cpu
from nemo_ptq.backends.base import ArtifactInfo, Backend, BackendConfig, register, torch_threads
from nemo_ptq.backends.calibration import CalibrationSample
from nemo_ptq.config import check_choices, check_flags
from nemo_ptq.errors import BackendUnavailableError, UnsupportedModelError
from nemo_ptq.models.fused import SPEC_FILE, ConvUnit, FusedCTC, FusedSpec

ENGINES = ("onednn", "x86", "fbgemm", "qnnpack")
OBSERVERS = {
    "minmax": tq.MinMaxObserver,
    "moving_average_minmax": tq.MovingAverageMinMaxObserver,
    "histogram": tq.HistogramObserver,
}
MODEL = "model.int8.pt"
DECODER = "decoder"  # the CTC logits layer, float in every eager variant


@dataclass(frozen=True)
class EagerCalibration(CalibrationSample):
    observer: str = "histogram"  # activation observer: minmax | moving_average_minmax | histogram
    per_channel: bool = True  # weights: per output channel (symmetric) or per tensor
    # 7-bit activations: needed where u8*s8 products saturate (x86 without VNNI); auto decides by
    # the CPU (`nemo_ptq.cpu`), for every engine but qnnpack, whose kernels never saturate.
    reduce_range: bool | str = cpu.AUTO

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"observer": OBSERVERS})
        check_flags(self, ("per_channel",))
        cpu.check_reduce_range(self.reduce_range)


@dataclass(frozen=True)
class EagerConfig(BackendConfig):
    engine: str
    calibration: EagerCalibration = field(default_factory=EagerCalibration)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"engine": ENGINES})
        if self.calibration.reduce_range == cpu.AUTO:
            reduce = False if self.engine == "qnnpack" else cpu.resolve_reduce_range(cpu.AUTO)
            object.__setattr__(self, "calibration", dataclasses.replace(self.calibration, reduce_range=reduce))
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
    calibration_file = "observers.pt"  # the activation observers' state

    def _prepared(self, fused: FusedCTC, float_layers: Sequence[str] = ()) -> nn.Module:
        """Fuse Conv+ReLU pairs, attach observers: the model calibration runs through (all layers
        quantized), or with `float_layers` the one convert turns into the artifact."""
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
        for path in _wrapped(float_layers):
            _keep_float(model, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tq.prepare(model)

    @_in_engine
    def observe(self, fused: FusedCTC, features: Iterable[np.ndarray], payload: Path) -> None:
        model = self._prepared(fused)
        with torch.inference_mode():
            for feats in features:
                model(torch.from_numpy(feats)[None])
        torch.save(_observer_state(model), payload)

    @_in_engine
    def convert(self, fused: FusedCTC, payload: Path, out_dir: Path) -> None:
        model = self._prepared(fused, self.config.float_layers)
        state = _to_float_layer_stubs(torch.load(payload, map_location="cpu", weights_only=True),
                                      self.config.float_layers)
        if set(state) != set(_observer_state(model)):  # observers of another model: wrong ranges
            raise self.foreign_calibration(payload, "holds observers of other layers than this model's")
        model.load_state_dict(state, strict=False)  # the weights stay those of `fused`
        quantized = _convert(model)
        torch.save(_compact(quantized.state_dict()), out_dir / MODEL)
        (out_dir / SPEC_FILE).write_text(json.dumps(fused.spec.to_json()) + "\n")
        table = self.layer_table(fused)
        modules = dict(quantized.named_modules())  # the quantized modules keep the FP32 module paths
        wrapped = set(_wrapped(self.config.float_layers))
        names = {path: [f"{path}.{FLOAT_INDEX}" if path in wrapped else path] for path in table if path in modules}
        self.save_layers(out_dir, table, names, {name: _precision(modules[name]) for [name] in names.values()})

    @_in_engine
    def load(self, artifact_dir: Path, threads: int):
        spec = FusedSpec.from_json(json.loads((artifact_dir / SPEC_FILE).read_text()))
        module = _convert(self._prepared(FusedCTC(spec), self.config.float_layers))
        module.load_state_dict(_expanded(torch.load(artifact_dir / MODEL, map_location="cpu", weights_only=True)))

        def run(features: np.ndarray) -> np.ndarray:
            with _engine(self.config.engine), torch_threads(threads), torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()

        return run

    def batch_limit(self) -> tuple[int, str] | None:
        if self.config.engine != "qnnpack":
            return None
        return 1, ("qnnpack's quantized convs take memory in proportion to the batch's padded frames "
                   "(measured on x86 with QuartzNet 5x5: 14.7 GB at batch 4 of 15 s rows), so a batch of 16 "
                   "is killed for memory; qnnpack is the ARM variant: run it one utterance per call")

    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        table, precisions = self.load_layers(artifact_dir)
        return ArtifactInfo.from_table(
            table, precisions,
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


# A float layer P becomes Sequential(DeQuantStub, P's module, QuantStub) at P: these index the
# float module and the stub whose observer takes over the one calibration attached to P's output.
FLOAT_INDEX, QUANT_INDEX = 1, 2


def _wrapped(float_layers: Sequence[str]) -> list[str]:
    return [path for path in float_layers if path != DECODER]  # the decoder is float already


def _keep_float(model: nn.Module, path: str) -> None:
    """The module at `path` in float on dequantized input, its output quantized again."""
    module = model.get_submodule(path)
    module.qconfig = None
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, nn.Sequential(tq.DeQuantStub(), module, tq.QuantStub()))


def _to_float_layer_stubs(state: dict, float_layers: Sequence[str]) -> dict:
    """Calibrated observer state (every layer observed) with each float layer's output observer
    moved to the QuantStub after it (`_keep_float`)."""
    moved = {}
    for key, value in state.items():
        for path in _wrapped(float_layers):
            if key.startswith(f"{path}.activation_post_process."):
                key = f"{path}.{QUANT_INDEX}{key[len(path):]}"
        moved[key] = value
    return moved


def _observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    """The activation observers' buffers only (the weights come from the FP32 model again)."""
    return {k: v for k, v in prepared.state_dict().items() if "activation_post_process" in k}
