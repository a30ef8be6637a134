"""Reading params.yaml: one validated dataclass per section, unknown keys are errors."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemo_ptq.config import parse_dataclass
from nemo_ptq.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


def load_section(section: str, path: Path = DEFAULT_PARAMS, *, required: bool = True) -> Any:
    """The raw YAML value of one top-level section (None for a missing optional one)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the stage from the repository root (or pass --params)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if section not in params and not required:
        return None
    if section not in params:
        raise ConfigError(f"{path} has no '{section}' section")
    return params[section]


def load_config(cls: type, section: str, path: Path = DEFAULT_PARAMS) -> Any:
    return parse_dataclass(cls, load_section(section, path), where=section)


EMBEDDED_CHECKPOINT = "data/embedded/model.nemo"


@dataclass(frozen=True)
class ModelParams:
    source: str
    # The local file that dvc.yaml names as a dependency of fetch-pretrained (${model.checkpoint}),
    # so replacing it reruns the pipeline: a `file:` source must name the same file.
    checkpoint: str = EMBEDDED_CHECKPOINT
    sha256: str | None = None  # pinned sha256 of the checkpoint file; a mismatch is an error

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("source must be a non-empty string such as 'embedded' or 'file:model.nemo'")
        if not isinstance(self.checkpoint, str) or not self.checkpoint.strip():
            raise ValueError(f"checkpoint must be a file path such as {EMBEDDED_CHECKPOINT}")
        if self.checkpoint.startswith("~"):
            raise ValueError(f"checkpoint {self.checkpoint!r}: DVC does not expand ~, write the full path")
        kind, _, path = self.source.strip().partition(":")
        if kind == "file" and Path(os.path.expanduser(path.strip())).resolve() != Path(self.checkpoint).resolve():
            raise ValueError(
                f"source {self.source!r} and checkpoint {self.checkpoint!r} name different files: set checkpoint "
                "to the same path, so that DVC tracks the file and replacing it reruns the pipeline"
            )
        pinned = self.sha256
        if pinned is not None and not (isinstance(pinned, str) and re.fullmatch(r"[0-9a-fA-F]{64}", pinned)):
            raise ValueError(f"sha256 must be 64 hex digits (as sha256sum prints them) or null, got {self.sha256!r}")


@dataclass(frozen=True)
class FuseParams:
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if not 0 < float(self.tolerance) < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")


@dataclass(frozen=True)
class ThroughputParams:
    """Server throughput on the eval utterances: batches and concurrent streams (see
    nemo_ptq.evaluation.throughput)."""

    batch_sizes: tuple[int, ...] = (1, 4, 16)  # utterances per call, length-sorted and zero-padded
    # concurrent batch-1 streams, each a process with max(1, threads // N) threads (N > threads oversubscribes)
    streams: tuple[int, ...] = (2,)
    timed_passes: int = 3  # passes over the utterances per batch size after one untimed pass; median
    max_utterances: int = 128  # at most this many eval utterances (every k-th, so lengths stay representative)

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "streams"):  # streams may be empty: no stream measurement
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
                raise ValueError(f"{name} must be a list of integers, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name} must hold integers >= 1, got {list(values)}")
            object.__setattr__(self, name, tuple(sorted(set(values))))
        if 1 not in self.batch_sizes:
            raise ValueError(f"batch_sizes must include 1 (the reference the others are compared with), "
                             f"got {list(self.batch_sizes)}")
        if int(self.timed_passes) < 1:
            raise ValueError(f"timed_passes must be >= 1, got {self.timed_passes}")
        if int(self.max_utterances) < 1:
            raise ValueError(f"max_utterances must be >= 1, got {self.max_utterances}")


@dataclass(frozen=True)
class EvaluateParams:
    threads: int = 2
    latency_audio_s: float = 10.0
    warmup_runs: int = 3
    timed_runs: int = 15
    timed_rounds: int = 3  # timed runs are split into this many alternating blocks (at most timed_runs)
    throughput: ThroughputParams = field(default_factory=ThroughputParams)

    def __post_init__(self) -> None:
        if int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not 0.5 <= float(self.latency_audio_s) <= 120:
            raise ValueError(f"latency_audio_s must be in [0.5, 120], got {self.latency_audio_s}")
        if int(self.warmup_runs) < 0:
            raise ValueError(f"warmup_runs must be >= 0, got {self.warmup_runs}")
        if int(self.timed_runs) < 1:
            raise ValueError(f"timed_runs must be >= 1, got {self.timed_runs}")
        if int(self.timed_rounds) < 1:
            raise ValueError(f"timed_rounds must be >= 1, got {self.timed_rounds}")
