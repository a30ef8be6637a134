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

Process-wide settings: a backend leaves them as it found them. What its runtime needs (torch's
intra-op threads, torch's quantized engine, Inductor and Dynamo config) it sets only inside the
calls that need it (calibrate, quantize, load, and each call of the runner, which is where
torch.compile compiles) and restores on the way out; `torch_threads` is the helper for threads.
So `load(..., threads)` decides the runner's threads whatever the caller's torch setting, and a
caller that runs several backends in one process (evaluate, the benchmarks) undoes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from nemo_ptq.config import parse_dataclass

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
    """Subclasses set `name` and `config_class` and implement the five methods."""

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
        """Load a saved artifact for inference with the given number of intra-op threads; neither
        load nor the runner leaves a process-wide setting changed."""

    @abstractmethod
    def describe(self, artifact_dir: Path) -> ArtifactInfo:
        """Size on disk and the precision each conv layer runs in."""

    def save_config(self, out_dir: Path) -> None:
        payload = {"backend": self.name, **dataclasses.asdict(self.config)}
        (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


_REGISTRY: dict[str, type[Backend]] = {}


def skip_calibration(config: Any) -> None:
    """For a config that quantizes nothing (e.g. an FP32 baseline): the calibrate stage draws no data."""
    object.__setattr__(config, "calibration", None)


def register(cls: type[Backend]) -> type[Backend]:
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
