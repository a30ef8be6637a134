"""torchao PT2E static INT8: torch.export -> prepare_pt2e(X86InductorQuantizer) -> calibrate ->
convert_pt2e, deployed as a saved ExportedProgram that `load` compiles with Inductor (freezing on).

Inductor lowers quantized conv2d to oneDNN kernels but leaves quantized conv1d as dequantize +
FP32 conv, so every Conv1d runs as Conv2d(1 x K) on a height-1 axis. calibrate saves the
observers' state; quantize rebuilds the same observed graph (export is deterministic), loads
that state and converts. `float_layers` are applied between the two: their convs read the float
weight instead of the observed one, so they run in float on the same 8-bit inputs and the rest
of the graph keeps its calibrated quantization (telling the quantizer to skip them would change
how it annotates their neighbours, which then need ranges the calibration never observed).
Compiling needs a C compiler at run time; the compile time is written at quantize time next to
the artifact (compile.json): every process that loads it pays it once.

Input shapes (`shapes`): Inductor's kernels for a fixed length run about 2x faster than its
dynamic-shape ones, but compiling per length recompiles for every new utterance length. `buckets`
pads each input with zeros to a multiple of `bucket_frames` and compiles once per bucket; the
model masks the padding the way NeMo's MaskedConv1d does, so the valid output frames equal those
of the unpadded input. Masking needs the QuartzNet/Jasper rewrite (FusedCTC).
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nemo_ptq import cpu
from nemo_ptq.backends.base import ArtifactInfo, Backend, BackendConfig, register, torch_threads
from nemo_ptq.backends.calibration import CalibrationSample
from nemo_ptq.config import check_choices, check_flags
from nemo_ptq.errors import BackendUnavailableError, ConfigError
from nemo_ptq.models.export import feature_dim, grow_length_caches

PROGRAM = "model.pt2"
COMPILE_LOG = "compile.json"
EXAMPLE_FRAMES = 300
SHAPES = ("buckets", "per_length", "dynamic")
ARCHIVE_ALIGNMENT = 64  # bytes, as torch.export.save aligns tensor records


@dataclass(frozen=True)
class Pt2eConfig(BackendConfig):
    # X86InductorQuantizer's static config: HistogramObserver activations (u8), per-channel s8 weights.
    reduce_range: bool | str = cpu.AUTO  # 7-bit activations; auto: where u8*s8 saturates (no VNNI)
    conv2d_form: bool = True  # run Conv1d as Conv2d(1 x K): the only form Inductor lowers to INT8
    # buckets: pad to a multiple of bucket_frames, one graph per bucket (QuartzNet/Jasper only).
    # per_length: one graph per input length (each new length compiles again, seconds each); the
    # only mode in which Inductor's INT8 lowering works on Citrinet and Conformer graphs.
    # dynamic: one graph for every length, about 2x slower kernels.
    shapes: str = "buckets"
    bucket_frames: int = 200  # 2 s of 10 ms frames: at most 2 s of padding per utterance
    calibration: CalibrationSample = field(default_factory=CalibrationSample)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "reduce_range", cpu.resolve_reduce_range(self.reduce_range))
        check_flags(self, ("conv2d_form",))
        check_choices(self, {"shapes": SHAPES})
        if isinstance(self.bucket_frames, bool) or not isinstance(self.bucket_frames, int) or self.bucket_frames < 1:
            raise ValueError(f"bucket_frames must be a positive number of feature frames, got {self.bucket_frames!r}")
        if self.shapes == "buckets" and not self.conv2d_form:
            raise ValueError("shapes: buckets needs conv2d_form: true (the masked rewrite runs in Conv2d form)")


@register
class Pt2eBackend(Backend):
    name = "pt2e"
    config_class = Pt2eConfig
    calibration_file = "observers.pt"  # the observers' buffers of the exported, observed graph

    def _observed(self, fp32: nn.Module) -> torch.fx.GraphModule:
        """The exported model with observers: what calibration runs through."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        grow_length_caches(fp32)
        model = self._exportable(fp32)
        quantizer = X86InductorQuantizer()
        quantizer.set_global(get_default_x86_inductor_quantization_config(reduce_range=self.config.reduce_range))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return prepare_pt2e(_export(model, feature_dim(fp32, self.card), self._masked).module(), quantizer)

    @property
    def _masked(self) -> bool:
        return self.config.shapes == "buckets"

    def _exportable(self, fp32: nn.Module) -> nn.Module:
        model = Conv2dForm(fp32) if self.config.conv2d_form else fp32.eval()
        if self._masked and not (self.config.conv2d_form and model.whole_body):
            raise ConfigError(f"pt2e shapes: buckets masks padding in the QuartzNet/Jasper rewrite, which "
                              f"{type(fp32).__name__} is not: set shapes: per_length (or dynamic) for this model")
        return model

    def observe(self, fp32: nn.Module, features: Iterable[np.ndarray], payload: Path) -> None:
        observed = self._observed(fp32)
        with torch.no_grad():
            for feats in features:
                x = torch.from_numpy(feats)[None]
                observed(x, torch.tensor([x.shape[-1]])) if self._masked else observed(x)
        torch.save(_observer_state(observed), payload)

    def convert(self, fp32: nn.Module, payload: Path, out_dir: Path) -> None:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        observed = self._observed(fp32)
        state = torch.load(payload, map_location="cpu", weights_only=True)
        expected = set(_observer_state(observed))
        if set(state) != expected:  # observers of another model: default or wrong ranges
            differ = sorted(expected ^ set(state))
            raise self.foreign_calibration(payload, f"holds other observers than this model's ({', '.join(differ[:3])}, ...)")
        observed.load_state_dict(state, strict=False)
        exportable = self._exportable(fp32)
        runtime = getattr(exportable, "runtime_paths", {})  # module paths in the Conv2d form
        table = self.layer_table(fp32)
        if self.config.float_layers:
            layer_nodes = _layer_nodes(observed)
            _read_float_weights(observed, set(self.float_runtime_names(
                {path: [node.name for node in layer_nodes.get(runtime.get(path, path), [])]
                 for path in self.config.float_layers})))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = convert_pt2e(observed)
        _drop_unused_parameters(converted)
        _share_zero_constants(converted)
        features = feature_dim(fp32, self.card)
        _save_compact(_export(converted, features, self._masked), out_dir / PROGRAM)
        self.save_layers(out_dir, table, {path: [runtime.get(path, path)] for path in table},
                         _graph_precisions(converted))
        # Compile once here so the artifact records what every process that loads it pays.
        run = self.load(out_dir, threads=torch.get_num_threads())
        start = time.perf_counter()
        run(np.zeros((1, features, EXAMPLE_FRAMES), dtype=np.float32))
        seconds = round(time.perf_counter() - start, 2)
        (out_dir / COMPILE_LOG).write_text(json.dumps({"first_call_seconds": seconds}) + "\n")

    def load(self, artifact_dir: Path, threads: int):
        return self._runners(artifact_dir, threads)[0]

    def load_batch(self, artifact_dir: Path, threads: int):
        return self._runners(artifact_dir, threads)[1] if self._masked else None

    def _runners(self, artifact_dir: Path, threads: int):
        """The batch-1 runner and, for a masked program, the padded-batch runner (both compile lazily),
        loaded once per program file and threads: load and load_batch share one compiled program."""
        _require_compiler()  # before the file: a missing compiler is the error to report
        program = Path(artifact_dir) / PROGRAM
        stat = program.stat()
        key = (str(program.resolve()), stat.st_mtime_ns, stat.st_size, threads)
        loaded = self.__dict__.setdefault("_loaded", {})
        if key not in loaded:
            loaded[key] = self._compiled_runners(program, threads)
        return loaded[key]

    def _compiled_runners(self, program: Path, threads: int):
        dynamic = self.config.shapes == "dynamic"
        compiled = _compiled(program, dynamic)
        bucket = self.config.bucket_frames

        def masked(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with _compile_settings(threads, dynamic), torch.no_grad():
                return compiled(torch.nn.functional.pad(x, (0, -x.shape[-1] % bucket)), lengths)

        def run(features: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            if not self._masked:
                with _compile_settings(threads, dynamic), torch.no_grad():
                    return compiled(x).numpy()
            log_probs, out_frames = masked(x, torch.full((x.shape[0],), x.shape[-1]))
            return log_probs[:, : int(out_frames[0])].numpy()

        def run_batch(features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            return masked(x, torch.from_numpy(np.asarray(lengths, dtype=np.int64)))[0].numpy()

        return run, run_batch

    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        artifact_dir = Path(artifact_dir)
        table, precisions = self.load_layers(artifact_dir)
        compile_note = ""
        if (artifact_dir / COMPILE_LOG).is_file():
            seconds = json.loads((artifact_dir / COMPILE_LOG).read_text())["first_call_seconds"]
            compile_note = f"; compile (first call, measured at quantize) {seconds:.1f} s"
        return ArtifactInfo.from_table(
            table, precisions, size_bytes=(artifact_dir / PROGRAM).stat().st_size,
            notes="torchao PT2E + X86InductorQuantizer, torch.compile (freezing); precision = conv with "
                  "quantized input and weight in the converted graph, which Inductor lowers to oneDNN qconv"
                  f"{'' if self.config.conv2d_form else ' (Conv1d form: left as dequantize + FP32 conv)'}"
                  + compile_note,
        )


class Conv2dForm(nn.Module):
    """The FP32 model with every Conv1d as a Conv2d(1 x K) over a height-1 axis; for a model
    with a `logits` method (FusedCTC) the whole body runs 4-D, else each conv reshapes itself."""

    def __init__(self, fp32: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(fp32).eval()
        self.whole_body = hasattr(self.model, "logits")
        # FP32 module path -> the same layer's path here (what the exported graph's nodes name)
        self.runtime_paths = {path: f"model.{path}" for path, _ in self.model.named_modules() if path}
        for parent_path, parent in list(self.model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) is nn.Conv1d:
                    conv = _as_conv2d(child)
                    setattr(parent, child_name, conv if self.whole_body else _Reshaped(conv))
                    if not self.whole_body:
                        path = f"{parent_path}.{child_name}" if parent_path else child_name
                        self.runtime_paths[path] += ".conv"

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None):
        """Log-probs; with `lengths` (valid frames of a zero-padded input) masked, and returned
        with the valid output frames."""
        if not self.whole_body:
            return self.model(features)
        if lengths is None:
            return self._log_probs(self.model.logits(features.unsqueeze(2)))
        logits, out_lengths = self.model.masked_logits(features.unsqueeze(2), lengths)
        return self._log_probs(logits), out_lengths

    @staticmethod
    def _log_probs(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.squeeze(2).transpose(1, 2), dim=-1)


class _Reshaped(nn.Module):
    """A Conv2d(1 x K) in a Conv1d's place; keeps the 1-D attributes that callers read (NeMo's
    MaskedConv1d computes output lengths from them)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        for name in ("kernel_size", "stride", "padding", "dilation"):
            setattr(self, name, getattr(conv, name)[1:])
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(2)).squeeze(2)


def _as_conv2d(conv: nn.Conv1d) -> nn.Conv2d:
    if isinstance(conv.padding, str):
        raise ConfigError(f"{conv} uses padding {conv.padding!r}; set conv2d_form: false for this model")
    conv2d = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), stride=(1, conv.stride[0]),
                       padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), groups=conv.groups,
                       bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        conv2d.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            conv2d.bias.copy_(conv.bias)
    return conv2d


def _export(model: nn.Module, features: int, masked: bool) -> torch.export.ExportedProgram:
    """One program for every batch size and length; `masked` adds the valid-frames input of the
    bucketed mode. The example batch is 2: export would fix a dimension traced at size 1."""
    auto = torch.export.Dim.AUTO  # the range the model allows (subsampling, position tables)
    example = torch.randn(2, features, EXAMPLE_FRAMES)
    inputs, shapes = ((example, torch.tensor([EXAMPLE_FRAMES] * 2)), ({0: auto, 2: auto}, {0: auto})) if masked \
        else ((example,), ({0: auto, 2: auto},))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, inputs, dynamic_shapes=shapes)


# Node metadata that execution needs; the rest (source stack traces, module stacks, provenance)
# is debugging information, about 1 MB of the artifact for QuartzNet 15x5.
RUNTIME_NODE_METADATA = frozenset({"val", "tensor_meta"})


def _save_compact(program: torch.export.ExportedProgram, path: Path) -> None:
    """torch.export.save without what running the program does not need, and with its graph
    deflated. The graph is JSON text (about 2 MB for QuartzNet 15x5, a tenth of the INT8
    weights) that deflates about 40x; torch writes every record uncompressed, so the records are
    copied into a new archive where JSON is deflated and tensors stay stored and 64-byte aligned
    as torch lays them out. torch.export.load reads both."""
    for node in program.graph.nodes:
        for key in set(node.meta) - RUNTIME_NODE_METADATA:
            del node.meta[key]
    program._example_inputs = None  # sample inputs: a random tensor kept for debugging
    raw = io.BytesIO()
    torch.export.save(program, raw)
    with zipfile.ZipFile(raw) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            record = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            if info.filename.endswith(".json"):
                record.compress_type = zipfile.ZIP_DEFLATED
            else:  # pad the local header's extra field so the data starts on a 64-byte boundary
                data_start = target.fp.tell() + 30 + len(info.filename.encode()) + 4
                padding = -data_start % ARCHIVE_ALIGNMENT
                record.extra = b"FB" + padding.to_bytes(2, "little") + b"Z" * padding
            target.writestr(record, source.read(info))



def _share_zero_constants(module: torch.fx.GraphModule) -> None:
    """Point every all-zero integer constant (the weights' symmetric zero points, int64 per output
    channel: 0.5 MB for QuartzNet 15x5) at one shared zero buffer; export saves a storage once."""
    zeros = []
    for target in {node.target for node in module.graph.nodes if node.op == "get_attr"}:
        owner, _, leaf = target.rpartition(".")
        parent = module.get_submodule(owner)
        tensor = getattr(parent, leaf)
        if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.int64 and not tensor.any():
            zeros.append((parent, leaf, tensor))
    if zeros:
        shared = torch.zeros(max(tensor.numel() for *_, tensor in zeros), dtype=torch.int64)
        for parent, leaf, tensor in zeros:
            setattr(parent, leaf, shared[: tensor.numel()].view(tensor.shape))


def _drop_unused_parameters(module: torch.fx.GraphModule) -> None:
    """convert_pt2e folds each weight into an INT8 constant but keeps the FP32 original as a
    parameter; export would save both (a larger file than the FP32 model)."""
    module.graph.eliminate_dead_code()
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    for name, _ in list(module.named_parameters()):
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(module.get_submodule(owner), leaf)
    module.recompile()


def _observer_state(observed: nn.Module) -> dict[str, torch.Tensor]:
    """The observers' buffers only (the weights come from the FP32 model again)."""
    return {k: v for k, v in observed.state_dict().items() if "activation_post_process" in k}


CONV_OPS = {"conv1d", "conv2d", "linear"}


def _layer_nodes(graph_module: torch.fx.GraphModule) -> dict[str, list[torch.fx.Node]]:
    """The conv/linear nodes of an exported graph by the module path that called them."""
    nodes: dict[str, list[torch.fx.Node]] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "").split(".")[0] in CONV_OPS:
            stack = node.meta.get("nn_module_stack") or {"": (node.name, None)}
            nodes.setdefault(_module_path(list(stack.values())[-1][0]), []).append(node)
    return nodes


def _graph_precisions(converted: torch.fx.GraphModule) -> dict[str, str]:
    """For each conv/linear node: int8 when both its input and weight come from dequantize."""
    precisions = {}
    for name, nodes in _layer_nodes(converted).items():
        for node in nodes:
            quantized = all(getattr(arg, "target", None) is not None and "dequantize" in str(arg.target)
                            for arg in node.args[:2])
            precisions[name] = "int8" if quantized else "fp32"
    return precisions


def _read_float_weights(observed: torch.fx.GraphModule, layers: set[str]) -> None:
    """Each of these conv/linear nodes (by name) reads its weight past the weight's observer, so
    convert leaves the weight float and the layer runs in float on its (still quantized) input."""
    for node in [node for node in observed.graph.nodes if node.name in layers]:
        weight = node.args[1]
        if weight.op == "call_module" and "activation_post_process" in str(weight.target):
            node.replace_input_with(weight, weight.args[0])
    observed.graph.eliminate_dead_code()  # the weight observers, now unused
    observed.recompile()


def _module_path(path: str) -> str:
    """`L['self'].model.blocks[0]...` or `model.blocks.0...` -> `model.blocks.0...`."""
    return path.replace("L['self'].", "").replace("[", ".").replace("]", "").replace("'", "")


def _compiled(program_path: Path, dynamic: bool):
    """The program under torch.compile, which compiles at the first call of each shape (in the runner)."""
    _require_compiler()
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)

    program = torch.export.load(program_path)
    return torch.compile(program.module(), dynamic=dynamic)


@contextmanager
def _compile_settings(threads: int, dynamic: bool) -> Iterator[None]:
    """Threads and the process-wide Inductor/Dynamo config that compiling and running need, for
    one call: any call may compile (a new length or bucket)."""
    import torch._inductor.config as inductor_config

    # per length or bucket: past the recompile limit Dynamo would run it uncompiled
    limits = {} if dynamic else {"recompile_limit": 1 << 16, "accumulated_recompile_limit": 1 << 16}
    # freezing: constant weights let Inductor pre-pack INT8 convs for oneDNN
    with torch_threads(threads), inductor_config.patch(freezing=True), torch._dynamo.config.patch(**limits):
        yield


def _require_compiler() -> None:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        raise BackendUnavailableError(
            "the pt2e backend compiles its kernels with torch.compile, which needs a C compiler: "
            "apt-get install gcc"
        )
