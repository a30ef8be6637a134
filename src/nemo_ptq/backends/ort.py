"""ONNX Runtime static INT8 (QDQ) on the exported FP32 model, or the FP32 model itself.

calibrate: export to ONNX, run ORT's calibrator (MinMax, Entropy or Percentile) over the
calibration features one utterance at a time, save the ranges (ORT's own JSON format).
`calibration.per_layer` ({regex on the FP32 module path: method}) gives the activation input of the
matching weight layers another method's range: each method named runs its own calibrator over the
same utterances, and the saved ranges take each tensor from its layer's method. Ranges belong to
tensors, so a tensor that several layers read (a block's input feeds its first conv and its
residual conv) takes the method of the first pattern that matches any of them.
quantize:  export again (deterministic, same tensor names), apply THOSE ranges through
`quantize_static(calibration_cache_path=...)` without re-running calibration (`precision:
dynamic`: `quantize_dynamic`, which needs none), and write a deployable folder: model.onnx
(sherpa-onnx's NeMo CTC signature and metadata_props), tokens.txt, and model_waveform.onnx: the
same model behind the model's own preprocessor (fetch-pretrained's frontend.onnx), fed audio.

Presets are named by the CPU they suit: `avx512_vnni` (U8 activations, S8 per-channel weights,
full 8-bit ranges: for x86 CPUs with an int8 dot product, VNNI or AMX), `avx2` (same with 7-bit
ranges, against the 16-bit saturation of u8*s8 products without one), `arm64` (S8 activations and
S8 per-channel weights, full ranges: for ARM64 CPUs with a dot product, SDOT), `auto` (the
default: whichever of the three fits the CPU that runs the stage, `nemo_ptq.cpu`; variant.json and
the metrics record the one taken), and `ort_defaults` (exactly `quantize_static`'s default
arguments: S8/S8 per-tensor, no pre-processing, every op type ORT can quantize) as the peer
baseline. Fields set in params override the preset. The ISA presets quantize weight layers, adds
and ReLUs only, keep products of two activations (attention scores) in float, and run the last
weight layer (the CTC logits) in float on 8-bit inputs (`float_logits`). `float_layers` adds more
layers to `nodes_to_exclude` by their ONNX node names (static and dynamic precision alike).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from nemo_ptq import cpu
from nemo_ptq.backends.base import ArtifactInfo, Backend, BackendConfig, register
from nemo_ptq.backends.calibration import CalibrationSample
from nemo_ptq.config import check_choices, check_flags
from nemo_ptq.errors import ConfigError, FloatLayerError
from nemo_ptq.models import export, frontend

PRECISIONS = ("int8", "dynamic", "fp32")
METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("u8", "s8")
# Weight layers and the adds between them; softmax, sigmoid/swish, LayerNorm and the attention
# score products stay float (quantizing them costs accuracy in Conformers for little speed).
WEIGHT_LAYERS_AND_ADDS = ["Conv", "MatMul", "Gemm", "Add", "Relu"]
PRESETS = {
    "avx512_vnni": {"activation_type": "u8", "weight_type": "s8", "per_channel": True, "reduce_range": False,
                    "preprocess": True, "op_types_to_quantize": WEIGHT_LAYERS_AND_ADDS, "float_logits": True},
    "avx2": {"activation_type": "u8", "weight_type": "s8", "per_channel": True, "reduce_range": True,
             "preprocess": True, "op_types_to_quantize": WEIGHT_LAYERS_AND_ADDS, "float_logits": True},
    "arm64": {"activation_type": "s8", "weight_type": "s8", "per_channel": True, "reduce_range": False,
              "preprocess": True, "op_types_to_quantize": WEIGHT_LAYERS_AND_ADDS, "float_logits": True},
    "ort_defaults": {"activation_type": "s8", "weight_type": "s8", "per_channel": False, "reduce_range": False,
                     "preprocess": False, "op_types_to_quantize": [],  # []: every op ORT can quantize
                     "float_logits": False},
}
WEIGHT_LAYER_OPS = {"Conv", "MatMul", "Gemm"}
MODEL = "model.onnx"
WAVEFORM_MODEL = "model_waveform.onnx"  # the same model behind the model's own preprocessor
TOKENS = "tokens.txt"
# Optimized-graph ops that compute in integers; every other op on a weight layer runs in float.
INT8_OPS = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul", "QGemm"}


@dataclass(frozen=True)
class OrtCalibration(CalibrationSample):
    method: str = "minmax"  # minmax | entropy | percentile (ORT's calibrators)
    percentile: float = 99.999  # for method: percentile (here and in per_layer)
    # {regex searched in the FP32 module path: method}: the activation input of each matching
    # weight layer takes that method's range (per tensor, the first pattern that matches a layer
    # reading it wins); other tensors take `method`. int8 precision only.
    per_layer: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"method": METHODS})
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if not isinstance(self.per_layer, Mapping):
            raise ValueError("per_layer must map a regex on FP32 module paths to a method, "
                             "e.g. {'body\\.0\\.': percentile}")
        for pattern, method in self.per_layer.items():
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ValueError(f"per_layer: {pattern!r} is not a regular expression ({err})") from None
            if method not in METHODS:
                raise ValueError(f"per_layer: unknown method {method!r} for {pattern!r}; "
                                 f"choose one of: {', '.join(METHODS)}")

    def matched_layers(self, layer_paths: Iterable[str], where: str) -> list[tuple[str, list[str]]]:
        """(method, the FP32 module paths its pattern matches) for each `per_layer` pattern, in
        order; ConfigError for a pattern that matches no layer (a typo would silently change nothing)."""
        paths = list(layer_paths)
        matched = []
        for pattern, method in self.per_layer.items():
            layers = [path for path in paths if re.search(pattern, path)]
            if not layers:
                raise ConfigError(f"{where}.calibration.per_layer: {pattern!r} matches no weight layer of this "
                                  f"model (they are named like {', '.join(paths[:3])}, ...)")
            matched.append((method, layers))
        return matched


@dataclass(frozen=True)
class OrtConfig(BackendConfig):
    # int8: static QDQ from calibrated ranges; dynamic: `quantize_dynamic` (weights only, activation
    # ranges per call, no calibration: what sherpa-onnx ships); fp32: the exported model as is.
    precision: str = "int8"
    preset: str = cpu.AUTO  # auto | avx512_vnni | avx2 | arm64 | ort_defaults; the fields below override it
    activation_type: str | None = None  # u8 | s8
    weight_type: str | None = None  # u8 | s8
    per_channel: bool | None = None
    reduce_range: bool | None = None
    preprocess: bool | None = None  # onnxruntime's quant_pre_process (shape inference, fusions)
    op_types_to_quantize: list[str] | None = None  # ONNX op types; [] = all that ORT supports
    # Run the last weight layer (the CTC logits) in float on 8-bit inputs: ORT's INT8 conv writes
    # 8-bit logits, whose coarse steps flip the argmax of near-tied frames (< 1 % of the MACs).
    float_logits: bool | None = None
    nodes_to_exclude: list[str] = field(default_factory=list)  # ONNX node names kept in FP32
    # With a chosen op list, MatMuls of two activations (attention scores, their weighted sums)
    # stay float unless this is true; then they run as INT8 QLinearMatMul on calibrated ranges.
    attention_matmuls: bool = False
    # Export the QuartzNet/Jasper rewrite with its padding masked: model.onnx then uses its `length`
    # input, so a zero-padded batch gives each row its own output (load_batch); a few ops more.
    mask_padding: bool = False
    calibration: OrtCalibration = field(default_factory=OrtCalibration)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"precision": PRECISIONS, "preset": [cpu.AUTO, *PRESETS]})
        if self.precision == "fp32":
            self.refuse_int8_options("precision fp32 runs every layer in float")
        if self.precision != "int8" and self.calibration.per_layer:
            raise ValueError(f"calibration.per_layer has no calibration to split: precision {self.precision} "
                             "calibrates nothing; remove it")
        if self.preset == cpu.AUTO:
            object.__setattr__(self, "preset", preset_for(cpu.detect()))
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        check_choices(self, {"activation_type": QUANT_TYPES, "weight_type": QUANT_TYPES})
        check_flags(self, ("per_channel", "reduce_range", "preprocess", "float_logits", "attention_matmuls",
                           "mask_padding"))
        for key in ("nodes_to_exclude", "op_types_to_quantize"):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"{key} must be a list of names")


@register
class OrtBackend(Backend):
    name = "ort"
    config_class = OrtConfig
    calibration_file = "ranges.json"  # ORT's own tensor-range format (save_tensors_data)

    def calibration_sample(self) -> OrtCalibration | None:
        return self.config.calibration if self.config.precision == "int8" else None

    def calibrate(self, fp32: nn.Module, features: Iterable[np.ndarray], out_dir: Path) -> None:
        if self.config.calibration.per_layer:  # a pattern that matches nothing: refused before any output
            self.config.calibration.matched_layers(self.layer_table(fp32), f"variants.{self.variant}")
        super().calibrate(fp32, features, out_dir)

    def _fp32_onnx(self, fp32: nn.Module, work_dir: Path) -> Path:
        """The FP32 ONNX model quantization starts from (pre-processed when configured)."""
        path = export.export_onnx(fp32, work_dir / "exported.onnx", export.feature_dim(fp32, self.card),
                                  masked=self.config.mask_padding)
        if not self.config.preprocess:
            return path
        from onnxruntime.quantization import quant_pre_process

        pre = work_dir / "preprocessed.onnx"
        with contextlib.chdir(work_dir):  # a failed symbolic shape inference leaves its files in the cwd
            try:
                quant_pre_process(str(path), str(pre))
            except Exception:  # ORT's symbolic shape inference gives up on some graphs (e.g. Citrinet's SE)
                quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        return pre

    def observe(self, fp32: nn.Module, features: Iterable[np.ndarray], payload: Path) -> None:
        from onnxruntime.quantization import TensorsData, save_tensors_data

        cal = self.config.calibration
        with tempfile.TemporaryDirectory() as tmp:
            model = self._fp32_onnx(fp32, Path(tmp))
            tensor_methods = self._tensor_methods(fp32, model)
            methods = [cal.method] + sorted(set(tensor_methods.values()) - {cal.method})
            calibrators = {m: self._calibrator(model, Path(tmp) / f"augmented_{m}.onnx", m) for m in methods}
            for feats in features:  # one utterance per call: memory stays at one utterance
                feed = export.deployment_feed(feats[None])
                if not self.config.mask_padding:
                    del feed[export.LENGTH]  # the unmasked export has no length input until convert adds it
                for calibrator in calibrators.values():
                    calibrator.collect_data(_Reader(feed))
            ranges = {m: calibrator.compute_data() for m, calibrator in calibrators.items()}
            merged = {name: ranges[tensor_methods.get(name, cal.method)][name] for name in ranges[cal.method]}
            save_tensors_data(TensorsData(ranges[cal.method].calibration_method, merged), payload)

    def _tensor_methods(self, fp32: nn.Module, model: Path) -> dict[str, str]:
        """Activation tensor -> calibration method, for the inputs of the layers `per_layer` matches
        (a tensor read by layers of several patterns: the first pattern's)."""
        if not self.config.calibration.per_layer:
            return {}
        proto = onnx.load(str(model))
        table = self.layer_table(fp32)
        node_inputs = {node.name: node.input[0] for node in proto.graph.node}
        names = export.onnx_layer_names(proto, table)
        methods: dict[str, str] = {}
        for method, paths in self.config.calibration.matched_layers(table, f"variants.{self.variant}"):
            for path in paths:
                for node in names.get(path, []):
                    methods.setdefault(node_inputs[node], method)
        return methods

    def _calibrator(self, model: Path, augmented: Path, method: str):
        from onnxruntime.quantization import create_calibrator

        options = {"percentile": float(self.config.calibration.percentile)} if method == "percentile" else {}
        return create_calibrator(model, None, augmented_model_path=str(augmented), calibrate_method=_method(method),
                                 extra_options=options)

    def convert(self, fp32: nn.Module, payload: Path | None, out_dir: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            model_fp32 = self._fp32_onnx(fp32, Path(tmp))
            table = self.layer_table(fp32)
            names = export.onnx_layer_names(onnx.load(str(model_fp32)), table)
            float_nodes = self.float_runtime_names(names)
            if self.config.precision == "dynamic":
                model = self._dynamic(model_fp32, Path(tmp) / "dynamic.onnx", float_nodes)
            elif payload is None:
                model = onnx.load(str(model_fp32))
            else:
                model = self._quantized(model_fp32, payload, Path(tmp) / "int8.onnx", float_nodes)
                self._check_kept_float(model, names, Path(tmp))
        export.add_length_input(model)
        export.add_metadata(model, {**export.deployment_metadata(self.card), "precision": self.config.precision})
        onnx.save(model, str(out_dir / MODEL))
        frontend_onnx = frontend.frontend_path(self.model_dir, self.card)
        if frontend_onnx is not None:
            onnx.save(frontend.waveform_model(frontend_onnx, model), str(out_dir / WAVEFORM_MODEL))
        export.write_tokens(out_dir / TOKENS, self.card)
        self.save_layers(out_dir, table, names)

    def _quantized(self, model_fp32: Path, ranges: Path, out_path: Path, float_nodes: list[str]) -> onnx.ModelProto:
        from onnxruntime.quantization import QuantFormat, QuantType, load_tensors_data, quantize_static

        graph = onnx.load(str(model_fp32))
        names = {out for node in graph.graph.node for out in node.output} | {export.INPUT}
        unknown = sorted(set(load_tensors_data(ranges).data) - names)
        if unknown:  # ranges from another model or export: applying them would be silently wrong
            raise self.foreign_calibration(ranges, f"has ranges for tensors this model lacks "
                                                   f"({', '.join(unknown[:3])}, ...)")
        qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
        exclude = list(self.config.nodes_to_exclude) + float_nodes
        if self.config.op_types_to_quantize and not self.config.attention_matmuls:  # products stay float
            exclude += _activation_matmuls(graph)
        if self.config.float_logits:
            exclude.append(logits_layer(graph))
        quantize_static(
            str(model_fp32), str(out_path), None, quant_format=QuantFormat.QDQ,
            per_channel=self.config.per_channel, reduce_range=self.config.reduce_range,
            activation_type=qtype[self.config.activation_type], weight_type=qtype[self.config.weight_type],
            nodes_to_exclude=exclude, op_types_to_quantize=list(self.config.op_types_to_quantize),
            calibrate_method=_method(self.config.calibration.method), calibration_cache_path=str(ranges),
        )
        return onnx.load(str(out_path))

    def _check_kept_float(self, model: onnx.ModelProto, names: dict[str, list[str]], work_dir: Path) -> None:
        """ConfigError for a float layer that ORT's graph optimizer quantizes anyway: it gives a
        Conv/Gemm whose input is dequantized and whose output is quantized again INT8 weights
        (WeightBiasQuantization) and fuses it into QLinearConv, whatever nodes_to_exclude said."""
        if not self.config.float_layers:
            return
        onnx.save(model, str(work_dir / "check.onnx"))
        _session(work_dir / "check.onnx", 1, optimized_path=work_dir / "check_optimized.onnx")
        layers = {path: names[path] for path in self.config.float_layers}
        precisions = runtime_precisions(onnx.load(str(work_dir / "check_optimized.onnx")), sum(layers.values(), []))
        int8 = [path for path, nodes in layers.items() if any(precisions[node] == "int8" for node in nodes)]
        if int8:
            raise FloatLayerError(f"variants.{self.variant}.float_layers: onnxruntime runs {int8[0]!r} in INT8 anyway "
                                  "(its optimizer quantizes a layer between two 8-bit tensors); on ort a layer stays "
                                  "float only next to a float tensor: keep a depthwise conv and its pointwise conv "
                                  "float together, or the first or logits layer, or use another backend")

    def _dynamic(self, model_fp32: Path, out_path: Path, float_nodes: list[str]) -> onnx.ModelProto:
        """Weights quantized offline, activations per call (ConvInteger / MatMulInteger)."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
        exclude = list(self.config.nodes_to_exclude) + float_nodes
        if self.config.float_logits:
            exclude.append(logits_layer(onnx.load(str(model_fp32))))
        quantize_dynamic(str(model_fp32), str(out_path), weight_type=qtype[self.config.weight_type],
                         per_channel=self.config.per_channel, reduce_range=self.config.reduce_range,
                         op_types_to_quantize=list(self.config.op_types_to_quantize), nodes_to_exclude=exclude)
        return onnx.load(str(out_path))

    def load(self, artifact_dir: Path, threads: int):
        session = _session(Path(artifact_dir) / MODEL, threads)

        def run(features: np.ndarray) -> np.ndarray:
            return session.run(None, export.deployment_feed(features))[0]

        return run

    def load_batch(self, artifact_dir: Path, threads: int):
        if not self.config.mask_padding:
            return None
        session = _session(Path(artifact_dir) / MODEL, threads)

        def run(features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            feed = {export.INPUT: np.ascontiguousarray(features, dtype=np.float32),
                    export.LENGTH: np.asarray(lengths, dtype=np.int64)}
            return session.run(None, feed)[0]

        return run

    def load_waveform(self, artifact_dir: Path, threads: int):
        path = Path(artifact_dir) / WAVEFORM_MODEL
        if not path.is_file():
            return None
        session = _session(path, threads)

        def run(samples: np.ndarray) -> np.ndarray:
            return session.run(None, frontend.waveform_feed(samples))[0]

        return run

    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        artifact_dir = Path(artifact_dir)
        table, _ = self.load_layers(artifact_dir)
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            _session(artifact_dir / MODEL, 1, optimized_path=optimized)
            names = [name for layer in table.values() for name in layer.runtime_names]
            optimized_model = onnx.load(str(optimized))
            precisions = runtime_precisions(optimized_model, names)
            int8_products, products = attention_products(optimized_model)
        return ArtifactInfo.from_table(
            table, precisions,
            size_bytes=sum((artifact_dir / name).stat().st_size for name in (MODEL, TOKENS)),
            notes=f"onnxruntime CPU, {self.config.precision}, preset {self.config.preset}; precisions read from "
                  f"ORT's optimized graph (QLinearConv = int8); size counts {MODEL} (features in), not the "
                  f"alternative {WAVEFORM_MODEL} (audio in)"
                  + (f"; attention products (MatMuls of two activations) in INT8: {int8_products} of {products}"
                     if products else ""),
        )


def preset_for(found: cpu.Cpu) -> str:
    """The ISA preset that is exact and fast on this CPU: full 8-bit ranges need an int8 dot product;
    on ARM64 with one (SDOT), S8 activations (`quantize_static`'s default type)."""
    if found.profile == "arm_dotprod":
        return "arm64"
    return "avx512_vnni" if found.int8_dot else "avx2"


class _Reader:
    """ORT's CalibrationDataReader protocol for one input dict."""

    def __init__(self, inputs: dict[str, np.ndarray]):
        self._items = iter([inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with no constant operand (attention scores and their weighted sums)."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and not any(name in constants for name in node.input)]


def attention_products(optimized: onnx.ModelProto) -> tuple[int, int]:
    """(INT8, all) MatMuls of two activations in ORT's optimized graph: QLinearMatMul whose
    operands (inputs 0 and 3) are both computed, and float MatMuls with no constant operand."""
    constants = {init.name for init in optimized.graph.initializer}
    int8 = sum(1 for node in optimized.graph.node if node.op_type == "QLinearMatMul"
               and node.input[0] not in constants and node.input[3] not in constants)
    float_ = sum(1 for node in optimized.graph.node if node.op_type == "MatMul"
                 and not any(name in constants for name in node.input))
    return int8, int8 + float_


def logits_layer(model: onnx.ModelProto) -> str:
    """The weight layer (Conv, MatMul, Gemm) that computes the graph's output, found by walking back
    from the output through the ops in between (transpose, log-softmax)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer.get(model.graph.output[0].name)
    while node is not None and node.op_type not in WEIGHT_LAYER_OPS:
        node = next((producer[name] for name in node.input if name in producer), None)
    if node is None:
        raise ConfigError("no Conv/MatMul/Gemm computes this model's output: set float_logits: false")
    return node.name


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _session(model: Path, threads: int, optimized_path: Path | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the optimized-model dump warns that it is CPU-specific: we know
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def runtime_precisions(optimized: onnx.ModelProto, layer_names: Iterable[str]) -> dict[str, str]:
    """Precision of each weight layer in ORT's optimized graph; fused nodes keep the original
    name plus a `_token_<n>` suffix, and quantize_dynamic's integer ops add `_quant`."""
    ops = {re.sub(r"(_quant)?(_token_\d+)?$", "", node.name): node.op_type for node in optimized.graph.node}
    return {name: ("int8" if ops.get(name) in INT8_OPS else "fp32") for name in layer_names}

