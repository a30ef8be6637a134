"""The one small protocol every quantization backend implements.

A backend is one module in this package that defines a config dataclass and a `Backend`
subclass, and registers it with `@register`. The pipeline drives it in three stages:

    calibrate:  calibrate(fused, calibration features, out_dir)  -> writes observed ranges
    quantize:   quantize(fused, calibration_dir, out_dir)        -> writes the INT8 artifact
    evaluate:   load(artifact_dir) -> Runner; runner(features) -> log-probs

A config with calibration data has a `calibration` field holding at least `num_utterances` and
`seed` (the calibrate stage draws that sample); a config without one is calibrated on nothing.
`fused` is the FP32 quantizable model from the fuse stage (`nemo_ptq.models.fused.FusedArtifact`).
Each stage runs in its own process, so everything a later stage needs goes through files.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from nemo_ptq.errors import ConfigError

CONFIG_FILE = "variant.json"


class Runner(Protocol):
    """A loaded model: features [1, feature_dim, frames] float32 -> log-probs [1, frames', vocab+1]."""

    def __call__(self, features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ArtifactInfo:
    """What evaluate reports about a quantized artifact besides accuracy and speed."""

    size_bytes: int  # bytes on disk of the files a deployment needs
    int8_conv_fraction: float  # share of conv layers (by count) that run in INT8
    int8_mac_fraction: float  # share of conv multiply-accumulates that run in INT8
    layer_precisions: dict[str, str]  # conv layer name -> precision it really runs in
    notes: str = ""

    @classmethod
    def from_layers(cls, precisions: dict[str, str], macs: dict[str, int], *, size_bytes: int,
                    notes: str) -> "ArtifactInfo":
        """From per-layer precisions and MACs (convs, and MatMul/Gemm with weights where present)."""
        int8 = [name for name, p in precisions.items() if p == "int8"]
        total = sum(macs.get(name, 0) for name in precisions)
        return cls(
            size_bytes=size_bytes,
            int8_conv_fraction=len(int8) / max(1, len(precisions)),
            int8_mac_fraction=sum(macs.get(name, 0) for name in int8) / max(1, total),
            layer_precisions=precisions,
            notes=notes,
        )


class Backend(ABC):
    """Subclasses set `name` and `config_class` and implement the four abstract methods."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any, card: Mapping[str, Any] | None = None):
        self.config = config
        self.card = dict(card or {})  # the fetch-pretrained model card (vocabulary, sample rate, ...)

    @classmethod
    def from_params(cls, variant: str, entry: Mapping[str, Any], card: Mapping[str, Any] | None = None) -> "Backend":
        options = {key: value for key, value in entry.items() if key != "backend"}
        return cls(parse_dataclass(cls.config_class, options, where=f"variants.{variant}"), card)

    @abstractmethod
    def calibrate(self, fused: Any, features: Iterable[np.ndarray], out_dir: Path) -> None:
        """Observe activation ranges on calibration features and save them under out_dir."""

    @abstractmethod
    def quantize(self, fused: Any, calibration_dir: Path, out_dir: Path) -> None:
        """Build the INT8 artifact from the FP32 model and the saved ranges; save under out_dir."""

    @abstractmethod
    def load(self, artifact_dir: Path, threads: int) -> Runner:
        """Load a saved artifact for inference with the given number of intra-op threads."""

    @abstractmethod
    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        """Size on disk and the precision each conv layer runs in."""

    def save_config(self, out_dir: Path) -> None:
        payload = {"backend": self.name, **dataclasses.asdict(self.config)}
        (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


_REGISTRY: dict[str, type[Backend]] = {}


def check_choices(config: Any, choices: Mapping[str, Iterable[str]]) -> None:
    """Config validation: each named field holds one of its valid values."""
    for key, valid in choices.items():
        if getattr(config, key) not in valid:
            raise ValueError(f"unknown {key} {getattr(config, key)!r}; choose one of: {', '.join(valid)}")


def check_flags(config: Any, names: Iterable[str]) -> None:
    """Config validation: each named field is a boolean (YAML `yes`/`1` would slip through otherwise)."""
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be true or false")


def skip_calibration(config: Any) -> None:
    """For a config that quantizes nothing (e.g. an FP32 baseline): the calibrate stage draws no data."""
    object.__setattr__(config, "calibration", None)


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Backend]]:
    return dict(_REGISTRY)


def parse_dataclass(cls: type, values: Mapping[str, Any] | None, *, where: str) -> Any:
    """Build a (possibly nested) dataclass from YAML values; unknown or missing keys are errors."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        field_type = fields[name].type
        nested = _dataclass_type(field_type, cls)
        if nested is not None and isinstance(value, Mapping):
            value = parse_dataclass(nested, value, where=f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where}: {err}") from None
    except ValueError as err:  # __post_init__ validation
        raise ConfigError(f"{where}: {err}") from None


def _dataclass_type(annotation: Any, owner: type) -> type | None:
    if isinstance(annotation, str):
        import sys

        annotation = getattr(sys.modules[owner.__module__], annotation, None)
    return annotation if dataclasses.is_dataclass(annotation) else None
