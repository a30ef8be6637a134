"""OpenVINO: the exported FP32 model as an IR, optionally quantized by NNCF, on the CPU plugin.

`precision: int8` quantizes with `nncf.quantize` on the calibration utterances; `precision: fp32`
deploys the FP32 IR, and `inference_precision` says what the plugin computes the float layers
in (OpenVINO's default on AVX-512 BF16 / AMX CPUs is bf16, not f32).

The loader matters for depthwise convs: `core.read_model(model.onnx)` keeps each depthwise weight
behind a Reshape, so NNCF sees a computed input, gives it per-element FakeQuantize ranges, and
the plugin runs every depthwise conv in float. `ov.convert_model` folds those constants first and
NNCF then quantizes all convs (checked from the compiled model's runtime precisions).

`bias_correction` picks NNCF's own bias correction: `fast` (nncf.quantize's default), `full`
(`fast_bias_correction=False`: statistics collected layer by layer on the quantized model) or
`none`. It acts at convert only, so one calibration serves every value.

NNCF has no public way to save activation statistics and apply them later, so calibrate saves
the sampled features (compressed) and quantize runs NNCF on exactly those.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from nemo_ptq import cpu
from nemo_ptq.backends.base import ArtifactInfo, Backend, BackendConfig, register
from nemo_ptq.backends.calibration import CalibrationSample
from nemo_ptq.config import check_choices
from nemo_ptq.models import export

PRECISIONS = ("int8", "fp32")
INFERENCE_PRECISIONS = ("f32", "bf16", "plugin_default")  # the CPU plugin's INFERENCE_PRECISION_HINT
LOADERS = ("convert_model", "read_model")
PRESETS = ("performance", "mixed")
BIAS_CORRECTIONS = ("fast", "full", "none")
MODEL = "model.xml"
WEIGHTS = "model.bin"
TOKENS = "tokens.txt"
WEIGHT_LAYER_TYPES = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution"}


@dataclass(frozen=True)
class OvConfig(BackendConfig):
    CONVERT_OPTIONS = BackendConfig.CONVERT_OPTIONS + ("bias_correction",)

    precision: str = "int8"  # int8 (NNCF) | fp32 (the FP32 IR, no calibration)
    inference_precision: str = "f32"  # f32 | bf16 | plugin_default (leave the hint unset: bf16 here)
    loader: str = "convert_model"  # convert_model | read_model (read_model: depthwise convs stay float)
    preset: str = "performance"  # NNCF preset: performance (symmetric) | mixed (asymmetric activations)
    bias_correction: str = "fast"  # NNCF's bias correction: fast (its default) | full | none
    calibration: CalibrationSample = field(default_factory=CalibrationSample)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"precision": PRECISIONS, "inference_precision": INFERENCE_PRECISIONS,
                             "loader": LOADERS, "preset": PRESETS, "bias_correction": BIAS_CORRECTIONS})
        if self.precision == "fp32":
            self.refuse_int8_options("precision fp32 runs every layer in float")
            if self.bias_correction != "fast":
                raise ValueError("bias_correction has no quantization to correct: precision fp32 runs every layer "
                                 "in float; remove it")


@register
class OvBackend(Backend):
    name = "ov"
    config_class = OvConfig
    calibration_file = "features.npz"  # the sampled calibration features, compressed

    def calibration_sample(self) -> CalibrationSample | None:
        return self.config.calibration if self.config.precision == "int8" else None

    def skip_reason(self, found: cpu.Cpu) -> str | None:
        if self.config.inference_precision == "bf16" and not found.native_bf16:
            return (f"inference_precision bf16 needs AVX512_BF16 or AMX; on this CPU ({found.profile}) the plugin "
                    "emulates bf16 or runs f32, so the figures would not be bf16's")
        return None

    def observe(self, fp32: nn.Module, features: Iterable[np.ndarray], payload: Path) -> None:
        with payload.open("wb") as out:  # np.savez would append .npz to a name without it
            np.savez_compressed(out, **{f"utt{i:05d}": feats.astype(np.float32) for i, feats in enumerate(features)})

    def convert(self, fp32: nn.Module, payload: Path | None, out_dir: Path) -> None:
        import openvino as ov

        features = export.feature_dim(fp32, self.card)
        samples = None if payload is None else self._samples(payload, features)
        table = self.layer_table(fp32)
        with tempfile.TemporaryDirectory() as tmp:  # the IR may map the ONNX file: save before it goes
            onnx_path = export.export_onnx(fp32, Path(tmp) / "model.onnx", features)
            names = export.onnx_layer_names(onnx.load(str(onnx_path)), table)
            if self.config.loader == "convert_model":
                model = ov.convert_model(onnx_path)
            else:
                model = ov.Core().read_model(onnx_path)
            if samples is not None:
                model = self._nncf_quantized(model, samples, self.float_runtime_names(_ir_layer_names(model, names)))
            metadata = {**export.deployment_metadata(self.card), "precision": self.config.precision}
            for key, value in metadata.items():
                model.set_rt_info(value, ["nemo_ptq", key])
            ov.save_model(model, out_dir / MODEL, compress_to_fp16=False)  # keep float weights exact
        export.write_tokens(out_dir / TOKENS, self.card)
        self.save_layers(out_dir, table, names)

    def _samples(self, payload: Path, features: int) -> list[np.ndarray]:
        with np.load(payload) as saved:
            samples = [saved[key][None] for key in sorted(saved.files)]
        if any(sample.shape[1] != features for sample in samples):
            raise self.foreign_calibration(payload, f"holds features of another size than this model's {features}")
        return samples

    def _nncf_quantized(self, model, samples: list[np.ndarray], float_ops: list[str]):
        import nncf

        fast, advanced = self.nncf_bias_correction()
        return nncf.quantize(model, nncf.Dataset(samples), preset=self.nncf_preset(), subset_size=len(samples),
                             ignored_scope=nncf.IgnoredScope(names=float_ops), fast_bias_correction=fast,
                             advanced_parameters=advanced)

    def nncf_preset(self):
        import nncf

        return {"performance": nncf.QuantizationPreset.PERFORMANCE,
                "mixed": nncf.QuantizationPreset.MIXED}[self.config.preset]

    def nncf_bias_correction(self):
        """`bias_correction` as NNCF's (fast_bias_correction, advanced quantization parameters)."""
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        return (self.config.bias_correction != "full",
                AdvancedQuantizationParameters(disable_bias_correction=self.config.bias_correction == "none"))

    def load(self, artifact_dir: Path, threads: int):
        compiled = self._compiled(Path(artifact_dir), threads)
        request = compiled.create_infer_request()

        def run(features: np.ndarray) -> np.ndarray:
            request.infer({0: np.ascontiguousarray(features, dtype=np.float32)})
            return request.get_output_tensor(0).data.copy()

        return run

    def _compiled(self, artifact_dir: Path, threads: int):
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if self.config.inference_precision != "plugin_default":
            config["INFERENCE_PRECISION_HINT"] = self.config.inference_precision
        return ov.Core().compile_model(artifact_dir / MODEL, "CPU", config)

    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        artifact_dir = Path(artifact_dir)
        table, _ = self.load_layers(artifact_dir)
        compiled = self._compiled(artifact_dir, threads=1)
        names = [name for layer in table.values() for name in layer.runtime_names]
        precisions = runtime_precisions(compiled.get_runtime_model(), names)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return ArtifactInfo.from_table(
            table, precisions,
            size_bytes=sum((artifact_dir / name).stat().st_size for name in (MODEL, WEIGHTS, TOKENS)),
            notes=f"OpenVINO CPU, {self.config.precision} IR via {self.config.loader}, "
                  f"INFERENCE_PRECISION_HINT={hint} ({self.config.inference_precision}); precisions are the "
                  "compiled model's runtimePrecision per layer",
        )


def runtime_precisions(runtime_model, layer_names: Iterable[str]) -> dict[str, str]:
    """Each weight layer's runtimePrecision in the compiled model (u8/i8 reported as int8). A
    runtime node lists the IR layers it fused in `originalLayersNames`."""
    layers = set(layer_names)
    found = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) not in WEIGHT_LAYER_TYPES:
            continue
        precision = info["runtimePrecision"].astype(str)
        precision = "int8" if precision in ("u8", "i8") else {"f32": "fp32"}.get(precision, precision)
        for original in info["originalLayersNames"].astype(str).split(","):
            layer = _onnx_layer(original, layers)
            if layer:
                found.setdefault(layer, precision)
    return {name: found.get(name, "unknown") for name in layer_names}


def _ir_layer_names(model, onnx_names: dict[str, list[str]]) -> dict[str, list[str]]:
    """Module path -> the IR's weight-layer ops (what NNCF's ignored scope names) that came from
    that layer's ONNX nodes (`onnx_names`, module path -> node names)."""
    path_of = {node: path for path, nodes in onnx_names.items() for node in nodes}
    names: dict[str, list[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in WEIGHT_LAYER_TYPES:
            layer = _onnx_layer(op.get_friendly_name(), path_of)
            if layer:
                names.setdefault(path_of[layer], []).append(op.get_friendly_name())
    return names


def _onnx_layer(name: str, layers) -> str:
    """The ONNX node an OpenVINO op came from: its name less any suffixes the conversion added
    (`<node>/WithoutBiases`, `<node>/DequantizationMultiply`); "" when none of `layers` matches."""
    while name and name not in layers:
        name = name.rpartition("/")[0]
    return name
