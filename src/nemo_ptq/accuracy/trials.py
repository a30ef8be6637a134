"""One trial: a variant quantized from its one calibration with chosen layers kept float, scored on
the dev set. Sensitivity and the search are sequences of trials.

Float layers are a convert option (`BackendConfig.CONVERT_OPTIONS`), so every trial reuses the
variant's calibration folder; only the convert step and one dev-set pass run per trial.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemo_ptq.accuracy.dev import DevScorer
from nemo_ptq.backends.base import ArtifactInfo, Backend


@dataclasses.dataclass(frozen=True)
class TrialResult:
    float_layers: tuple[str, ...]
    score: dict[str, float]  # `DevScore.as_dict()`
    info: ArtifactInfo


class Trials:
    def __init__(self, backend: Backend, fp32: Any, calibration_dir: Path, scorer: DevScorer, threads: int):
        self.backend = backend
        self.fp32 = fp32
        self.calibration_dir = Path(calibration_dir)
        self.scorer = scorer
        self.threads = threads

    def with_float_layers(self, layers: Sequence[str]) -> Backend:
        """The variant's backend with `float_layers` set (the params entry itself has none)."""
        config = dataclasses.replace(self.backend.config, float_layers=list(layers))
        return type(self.backend)(config, self.backend.card, self.backend.variant, self.backend.model_dir)

    def build(self, layers: Sequence[str], out_dir: Path) -> Backend:
        """Quantize with these float layers into out_dir; FloatLayerError if the runtime refuses one."""
        backend = self.with_float_layers(layers)
        backend.quantize(self.fp32, self.calibration_dir, Path(out_dir))
        return backend

    def run(self, layers: Sequence[str]) -> TrialResult:
        with tempfile.TemporaryDirectory(prefix="nemo_ptq_trial_") as tmp:
            backend = self.build(layers, Path(tmp))
            runner = backend.load(Path(tmp), self.threads)
            score = self.scorer.score(runner).as_dict()
            info = backend.describe(Path(tmp))
            del runner  # release the runtime's session before its files go
        return TrialResult(tuple(layers), score, info)
