"""The one small protocol every quantization backend implements.

A backend is one module in this package that defines a config dataclass and a `Backend`
subclass, and registers it with `@register`. The pipeline drives it in three stages:

    calibrate:  calibrate(fp32, calibration features, out_dir)  -> variant.json + the payload
    quantize:   quantize(fp32, calibration_dir, out_dir)        -> the INT8 artifact
    evaluate:   load(artifact_dir) -> Runner; runner(features) -> log-probs; describe(artifact_dir);
                load_batch(artifact_dir) -> BatchRunner or None, for artifacts that mask padding;
                load_waveform(artifact_dir) -> WaveformRunner or None, for artifacts that take audio

A backend implements four methods: `observe` (write the calibration payload), `convert` (build
the artifact from it), `load` and `describe`. This class owns the rest of the contract:

- `calibration_sample()`: which calibration utterances the variant needs, or None when it needs
  none (an FP32 baseline). By default the config's `calibration` field, a `CalibrationSample`.
- one calibration layout for every backend: `variant.json` (backend and config) plus one payload
  file named by `calibration_file`, written by `calibrate` and checked by `calibration_payload`,
  which raises `CalibrationError` for a missing folder or one made by another backend or config.
- one table of weight layers and MACs per model (`nemo_ptq.models.layers`), keyed by the FP32
  module path; each backend maps it to its own layer names, so coverage means the same everywhere.
- `float_layers` (`BackendConfig`, the base of every config): layers of that table kept in float,
  checked against the model's table at calibrate and quantize, applied by each backend's convert.

`fp32` is the FP32 model from the fuse stage (`FusedCTC`, or `NemoCTC` for other NeMo models).
Each stage runs in its own process, so everything a later stage needs goes through files.

Process-wide settings: a backend leaves them as it found them. What its runtime needs (torch's
intra-op threads, torch's quantized engine, Inductor and Dynamo config) it sets only inside the
calls that need it (calibrate, quantize, load, and each call of the runner, which is where
torch.compile compiles) and restores on the way out; `torch_threads` is the helper for threads.
So `load(..., threads)` decides the runner's threads whatever the caller's torch setting, and a
caller that runs several backends in one process (evaluate, the benchmarks) undoes nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from nemo_ptq.backends.calibration import CalibrationSample
from nemo_ptq.cpu import Cpu
from nemo_ptq.config import check_choices, parse_dataclass
from nemo_ptq.errors import CalibrationError, ConfigError, UnsupportedModelError

CONFIG_FILE = "variant.json"
LAYERS_FILE = "layers.json"


class Runner(Protocol):
    """A loaded model: features [1, feature_dim, frames] float32 -> log-probs [1, frames', vocab+1]."""

    def __call__(self, features: np.ndarray) -> np.ndarray: ...


class BatchRunner(Protocol):
    """A loaded model that masks padding: features [B, feature_dim, frames] zero-padded after each
    row's `lengths` valid frames -> log-probs [B, frames', vocab+1] whose valid frames equal each
    row run alone (frames past a row's own output length are undefined)."""

    def __call__(self, features: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...


class WaveformRunner(Protocol):
    """A deployable model fed audio: samples [samples] float32 at the model's rate -> log-probs
    [1, frames', vocab+1], the model's own preprocessor inside."""

    def __call__(self, samples: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ArtifactInfo:
    """What evaluate reports about a quantized artifact besides accuracy and speed."""

    size_bytes: int  # bytes on disk of the files a deployment needs
    int8_weight_layer_fraction: float  # share of weight layers (conv, linear), by count, that run in INT8
    int8_weight_mac_fraction: float  # share of the weight layers' multiply-accumulates that run in INT8
    layers: list[dict]  # per weight layer: FP32 module path, kind, the backend's names, precision, MACs
    notes: str = ""

    @property
    def layer_precisions(self) -> dict[str, str]:
        """FP32 module path -> the precision that layer really runs in."""
        return {layer["name"]: layer["precision"] for layer in self.layers}

    @classmethod
    def from_table(cls, table: Mapping[str, Any], runtime_precisions: Mapping[str, str], *, size_bytes: int,
                   notes: str) -> "ArtifactInfo":
        """From the model's layer table and the precision of each runtime layer (by backend name)."""
        from nemo_ptq.models.layers import module_precisions

        precisions = module_precisions(dict(table), runtime_precisions)
        int8 = [path for path, precision in precisions.items() if precision == "int8"]
        total = sum(layer.macs for layer in table.values())
        return cls(
            size_bytes=size_bytes,
            int8_weight_layer_fraction=len(int8) / max(1, len(table)),
            int8_weight_mac_fraction=sum(table[path].macs for path in int8) / max(1, total),
            layers=[{"name": path, "kind": layer.kind, "runtime_names": list(layer.runtime_names),
                     "precision": precisions[path],
                     "macs": layer.macs} for path, layer in table.items()],
            notes=notes,
        )


@dataclass(frozen=True)
class BackendConfig:
    """What every backend's config dataclass inherits; a subclass that defines `__post_init__`
    calls this one's.

    Every option is part of the calibration's identity (`Backend.calibration_identity`, checked
    by quantize) except the convert options: those choose what quantize builds from a
    calibration, which every backend makes whatever their value (all layers observed) and applies
    only at convert. So one calibration folder serves every value of them: issue 11's sensitivity
    and budget searches quantize many times from one calibration this way.
    """

    CONVERT_OPTIONS: ClassVar[tuple[str, ...]] = ("float_layers",)

    # FP32 module paths (the layer table's keys, `nemo_ptq.models.layers`) of weight layers that
    # stay in float, on the 8-bit activations around them; the backend maps them to its own names.
    float_layers: list[str] = field(default_factory=list, kw_only=True)
    # A function-preserving rescaling of the FP32 model before calibration and conversion
    # (`nemo_ptq.models.equalize`): none, or cross_layer (QuartzNet/Jasper rewrite only).
    equalize: str = field(default="none", kw_only=True)

    def __post_init__(self) -> None:
        from nemo_ptq.models.equalize import EQUALIZATIONS

        if not isinstance(self.float_layers, list) or not all(isinstance(p, str) for p in self.float_layers):
            raise ValueError("float_layers must be a list of FP32 module paths (e.g. blocks.0.body.0.conv)")
        if len(set(self.float_layers)) != len(self.float_layers):
            raise ValueError("float_layers names a layer twice")
        check_choices(self, {"equalize": EQUALIZATIONS})

    def refuse_int8_options(self, why: str) -> None:
        """For a config that quantizes nothing: float_layers and equalize would silently do nothing."""
        if self.float_layers:
            raise ValueError(f"float_layers has nothing to keep in float: {why}; remove it")
        if self.equalize != "none":
            raise ValueError(f"equalize has no quantization to help: {why}; remove it")


class Backend(ABC):
    """Subclasses set `name`, `config_class` (a `BackendConfig`) and `calibration_file`, and
    implement `observe`, `convert`, `load` and `describe`."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    calibration_file: ClassVar[str]  # the payload that observe writes next to variant.json

    def __init__(self, config: Any, card: Mapping[str, Any] | None = None, variant: str = "<variant>",
                 model_dir: Path | None = None):
        self.config = config
        self.card = dict(card or {})  # the fetch-pretrained model card (vocabulary, sample rate, ...)
        self.variant = variant  # the params.yaml name, for messages
        self.model_dir = model_dir  # the fetch-pretrained folder (its frontend graph), when known

    @classmethod
    def from_params(cls, variant: str, entry: Mapping[str, Any], card: Mapping[str, Any] | None = None,
                    model_dir: Path | None = None) -> "Backend":
        options = {key: value for key, value in entry.items() if key != "backend"}
        return cls(parse_dataclass(cls.config_class, options, where=f"variants.{variant}"), card, variant, model_dir)

    def calibration_sample(self) -> CalibrationSample | None:
        """The variant's `CalibrationSample`, or None when it is calibrated on nothing."""
        return self.config.calibration

    def skip_reason(self, found: Cpu) -> str | None:
        """Why evaluating this variant on this CPU would mislead (None: evaluate it), e.g. a
        bf16 variant where bf16 is emulated: it would be timed as a baseline that no one deploys."""
        return None

    # ---- the backend's part -----------------------------------------------------------------

    @abstractmethod
    def observe(self, fp32: Any, features: Iterable[np.ndarray], payload: Path) -> None:
        """Run the calibration features (at least one) through the model; save what quantizing
        needs (ranges, observer state, ...) as the one file `payload`."""

    @abstractmethod
    def convert(self, fp32: Any, payload: Path | None, out_dir: Path) -> None:
        """Build the artifact in out_dir (it exists) from the FP32 model and the checked payload
        (None when the variant needs no calibration); write the layer table (`save_layers`)."""

    @abstractmethod
    def load(self, artifact_dir: Path, threads: int) -> Runner:
        """Load a saved artifact for inference with the given number of intra-op threads; neither
        load nor the runner leaves a process-wide setting changed."""

    @abstractmethod
    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        """Size on disk and the precision each weight layer really runs in."""

    def load_batch(self, artifact_dir: Path, threads: int) -> BatchRunner | None:
        """A runner that masks the padding of a batch inside the model, when the artifact has one
        (None: its graph has no lengths input, so a padded batch's padding reaches the valid frames)."""
        return None

    def batch_limit(self) -> tuple[int, str] | None:
        """The largest batch the throughput measurement may run the artifact at, and why (None: any)."""
        return None

    def load_waveform(self, artifact_dir: Path, threads: int) -> WaveformRunner | None:
        """The artifact's waveform-input model, when it has one (None: features only)."""
        return None

    # ---- the contract every backend shares -----------------------------------------------------

    def calibrate(self, fp32: Any, features: Iterable[np.ndarray], out_dir: Path) -> None:
        """Write out_dir/variant.json and, for a variant that needs calibration, its payload."""
        out_dir = Path(out_dir)
        self.check_float_layers(fp32)  # fail before calibrating, not after
        fp32 = self.model_to_quantize(fp32)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.calibration_sample() is not None:
            features = iter(features)
            first = next(features, None)
            if first is None:
                raise ConfigError(f"variants.{self.variant}: calibration got no utterances: "
                                  "set calibration.num_utterances >= 1")
            self.observe(fp32, itertools.chain([first], features), out_dir / self.calibration_file)
        _write_json(out_dir / CONFIG_FILE, self.calibration_identity())

    def quantize(self, fp32: Any, calibration_dir: Path, out_dir: Path) -> None:
        """Check the calibration folder, then build the artifact and its variant.json in out_dir."""
        payload = self.calibration_payload(calibration_dir)
        self.check_float_layers(fp32)
        fp32 = self.model_to_quantize(fp32)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.convert(fp32, payload, out_dir)
        self.save_config(out_dir)

    def model_to_quantize(self, fp32: Any) -> Any:
        """The FP32 model that calibrate observes and quantize converts: `fp32`, or its equalized
        copy (the same function, other weight ranges); UnsupportedModelError if it cannot be."""
        from nemo_ptq.models.equalize import equalized

        return equalized(fp32, self.config.equalize)

    def calibration_payload(self, calibration_dir: Path) -> Path | None:
        """The payload of a calibration folder made by this backend with this config, convert
        options aside (None when the variant needs no calibration), or a CalibrationError saying
        what to rerun."""
        calibration_dir = Path(calibration_dir)
        rerun = f"run dvc repro calibrate@{self.variant}"
        saved_path = calibration_dir / CONFIG_FILE
        if not saved_path.is_file():
            raise CalibrationError(f"{calibration_dir} holds no calibration ({CONFIG_FILE} is missing): {rerun}")
        saved = json.loads(saved_path.read_text())
        if saved.get("backend") != self.name:
            raise CalibrationError(f"{calibration_dir} was calibrated by the {saved.get('backend')!r} backend, "
                                   f"not {self.name!r}: {rerun}")
        saved = {key: value for key, value in saved.items() if key not in self.config.CONVERT_OPTIONS}
        expected = self.calibration_identity()
        if saved != expected:
            differ = sorted(key for key in set(saved) | set(expected) if saved.get(key) != expected.get(key))
            raise CalibrationError(f"{calibration_dir} was calibrated for another {self.name} config "
                                   f"(differs in: {', '.join(differ)}): {rerun}")
        if self.calibration_sample() is None:
            return None
        payload = calibration_dir / self.calibration_file
        if not payload.is_file():
            raise CalibrationError(f"{payload} is missing: {rerun}")
        return payload

    def foreign_calibration(self, payload: Path, why: str) -> CalibrationError:
        """The error for a payload that does not fit this model (checked by the backend)."""
        return CalibrationError(f"{payload} {why}: it was made for another model; "
                                f"run dvc repro calibrate@{self.variant}")

    def config_payload(self) -> dict:
        """What the artifact's variant.json holds: the backend and its config, as JSON values."""
        return json.loads(json.dumps({"backend": self.name, **dataclasses.asdict(self.config)}))

    def calibration_identity(self) -> dict:
        """What the calibration's variant.json holds and quantize checks: the config payload less
        the convert options (`BackendConfig`), which the calibration does not depend on."""
        return {key: value for key, value in self.config_payload().items() if key not in self.config.CONVERT_OPTIONS}

    def save_config(self, out_dir: Path) -> None:
        _write_json(Path(out_dir) / CONFIG_FILE, self.config_payload())

    def check_float_layers(self, fp32: Any) -> None:
        """ConfigError unless every `float_layers` path is a weight layer of this model."""
        if not self.config.float_layers:
            return
        table = self.layer_table(fp32)
        unknown = [path for path in self.config.float_layers if path not in table]
        if unknown:
            examples = ", ".join(list(table)[:3])
            raise ConfigError(f"variants.{self.variant}.float_layers: {unknown[0]!r} is not a weight layer of this "
                              f"model; name FP32 module paths from its layer table ({examples}, ...; the `layers` "
                              "of any metrics file)")

    def layer_table(self, fp32: Any):
        """The FP32 model's weight layers and MACs, by module path (`nemo_ptq.models.layers`)."""
        from nemo_ptq.models.export import feature_dim
        from nemo_ptq.models.layers import weight_layers

        return weight_layers(fp32, feature_dim(fp32, self.card))

    def float_runtime_names(self, runtime_names: Mapping[str, Sequence[str]]) -> list[str]:
        """The backend's own names of the `float_layers`, from its map of module path -> names."""
        unnamed = [path for path in self.config.float_layers if not runtime_names.get(path)]
        if unnamed:
            raise UnsupportedModelError(f"variants.{self.variant}.float_layers: the {self.name} backend finds no "
                                        f"layer of its own for {unnamed[0]!r}, so it cannot keep it in float")
        return [name for path in self.config.float_layers for name in runtime_names[path]]

    @staticmethod
    def save_layers(out_dir: Path, table: Mapping[str, Any], runtime_names: Mapping[str, Sequence[str]],
                    precisions: Mapping[str, str] | None = None) -> None:
        """layers.json: the table with the backend's names, plus the runtime precisions by those
        names when quantize already knows them (eager, PT2E; ORT and OpenVINO read them at load)."""
        from nemo_ptq.models.layers import save_table, with_runtime_names

        extra = {} if precisions is None else {"precisions": dict(precisions)}
        save_table(Path(out_dir) / LAYERS_FILE, with_runtime_names(dict(table), runtime_names), extra)

    @staticmethod
    def load_layers(artifact_dir: Path) -> tuple[dict, dict[str, str] | None]:
        """The saved layer table and the precisions saved with it (None if none were)."""
        from nemo_ptq.models.layers import load_table

        table, extra = load_table(Path(artifact_dir) / LAYERS_FILE)
        return table, extra.get("precisions")


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    if "calibration" not in fields and cls.calibration_sample is Backend.calibration_sample:
        raise TypeError(f"{cls.__name__}: give {cls.config_class.__name__} a calibration field or override "
                        "calibration_sample()")
    if not issubclass(cls.config_class, BackendConfig):
        raise TypeError(f"{cls.__name__}: derive {cls.config_class.__name__} from BackendConfig (float_layers)")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Backend]]:
    return dict(_REGISTRY)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count is process-wide: `threads` inside the block, the caller's after."""
    import torch

    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
