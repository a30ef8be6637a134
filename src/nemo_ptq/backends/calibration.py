"""What every backend's calibration shares: which utterances, how many, in what order."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from nemo_ptq.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class CalibrationSample:
    """Which calibration utterances a variant sees; backends subclass it to add their options."""

    num_utterances: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_utterances, bool) or not isinstance(self.num_utterances, int) or self.num_utterances < 1:
            raise ValueError(f"num_utterances must be an integer >= 1, got {self.num_utterances!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


def select_utterances(pool: Sequence[T], sample: CalibrationSample | None) -> list[T]:
    """A seeded sample of the calibration pool (the pool order is the prepared manifest's); none
    for a variant that needs no calibration (`Backend.calibration_sample()` is None)."""
    if sample is None:
        return []
    if sample.num_utterances > len(pool):
        raise ConfigError(
            f"calibration.num_utterances is {sample.num_utterances} but the calibration set has only "
            f"{len(pool)} utterances: lower it or add sentences/voices to data.calibration_set"
        )
    indices = sorted(random.Random(sample.seed).sample(range(len(pool)), sample.num_utterances))
    return [pool[i] for i in indices]
