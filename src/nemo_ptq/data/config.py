"""The `data` section of params.yaml as validated dataclasses (unknown keys are errors)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nemo_ptq.config import parse_dataclass
from nemo_ptq.errors import ConfigError

KINDS = ("real", "synthetic")
BUILTINS = ("pocketsphinx",)
TTS_ENGINES = ("espeak-ng", "flite")
SOURCES = ("manifest", "builtin", "tts")
# A set's name becomes a folder name and part of DVC paths.
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TtsSource:
    engine: str
    voices: list[str]
    sentences: str  # text file, one sentence per line, relative to the repository root

    def __post_init__(self) -> None:
        if self.engine not in TTS_ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of: {', '.join(TTS_ENGINES)}")
        if not isinstance(self.voices, list) or not self.voices or not all(
            isinstance(v, str) and v.strip() for v in self.voices
        ):
            raise ValueError(f"voices must be a non-empty list of voice names, got {self.voices!r}")
        if not isinstance(self.sentences, str) or not self.sentences.strip():
            raise ValueError("sentences must be the path of a text file with one sentence per line")


@dataclass(frozen=True)
class SetSpec:
    name: str
    kind: str
    manifest: str | None = None
    builtin: str | None = None
    tts: TtsSource | None = None
    downmix: bool = False  # average multi-channel audio to mono instead of rejecting it
    limit: int | None = None  # keep only the first `limit` utterances (quick runs)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SET_NAME.match(self.name):
            raise ValueError(f"name must be letters, digits, '_', '-' or '.', got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of: {', '.join(KINDS)}; got {self.kind!r}")
        given = [key for key in SOURCES if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one source ({' | '.join(SOURCES)}), got {len(given)}")
        if self.manifest is not None and (not isinstance(self.manifest, str) or not self.manifest.strip()):
            raise ValueError("manifest must be the path of a NeMo manifest (JSON lines)")
        if self.builtin is not None and self.builtin not in BUILTINS:
            raise ValueError(f"unknown builtin {self.builtin!r}; choose one of: {', '.join(BUILTINS)}")
        if self.tts is not None and not isinstance(self.tts, TtsSource):
            raise ValueError("tts must be a mapping: {engine, voices, sentences}")
        if not isinstance(self.downmix, bool):
            raise ValueError(f"downmix must be true or false, got {self.downmix!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ValueError(f"limit must be a positive integer, got {self.limit!r}")

    @property
    def source(self) -> str:
        """A short description for summary.json, e.g. 'tts:espeak-ng' or 'manifest:data/x.jsonl'."""
        if self.manifest is not None:
            return f"manifest:{self.manifest}"
        if self.builtin is not None:
            return f"builtin:{self.builtin}"
        return f"tts:{self.tts.engine}"


@dataclass(frozen=True)
class DataParams:
    eval_sets: tuple[SetSpec, ...]
    calibration_set: SetSpec
    max_duration_s: float = 40.0

    def __post_init__(self) -> None:
        if not self.eval_sets:
            raise ValueError("eval_sets must list at least one set")
        names = [s.name for s in self.eval_sets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"eval set names must be unique; repeated: {', '.join(repeated)}")
        if self.calibration_set.name in names:
            raise ValueError(f"calibration_set name {self.calibration_set.name!r} is also an eval set name")
        if isinstance(self.max_duration_s, bool) or not isinstance(self.max_duration_s, (int, float)) \
                or self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be a positive number of seconds, "
                             f"got {self.max_duration_s!r}")

    @property
    def all_sets(self) -> tuple[SetSpec, ...]:
        return (*self.eval_sets, self.calibration_set)


def parse_data_params(values: Any) -> DataParams:
    """DataParams from the raw YAML `data` section; any problem is a ConfigError naming the key."""
    if not isinstance(values, Mapping):
        raise ConfigError("data: expected a mapping with eval_sets, calibration_set and max_duration_s")
    values = dict(values)
    eval_sets = values.get("eval_sets")
    if not isinstance(eval_sets, list):
        raise ConfigError("data.eval_sets: expected a list of sets ({name, kind, <source>})")
    values["eval_sets"] = tuple(_parse_set(v, f"data.eval_sets[{i}]") for i, v in enumerate(eval_sets))
    values["calibration_set"] = _parse_set(values.get("calibration_set"), "data.calibration_set")
    return parse_dataclass(DataParams, values, where="data")


def parse_dev_set(values: Any) -> SetSpec:
    """The `dev_set` section: one set, as an eval set is given, that sensitivity and accuracy
    budgets tune on (never the eval sets)."""
    return _parse_set(values, "dev_set")


def _parse_set(values: Any, where: str) -> SetSpec:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{name, kind, and one of: {', '.join(SOURCES)}}}")
    values = dict(values)
    if isinstance(values.get("tts"), Mapping):
        values["tts"] = parse_dataclass(TtsSource, values["tts"], where=f"{where}.tts")
    return parse_dataclass(SetSpec, values, where=where)
