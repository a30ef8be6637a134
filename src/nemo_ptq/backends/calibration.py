"""What every backend's calibration shares: which utterances, how many, in what order."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from nemo_ptq.errors import ConfigError

T = TypeVar("T")


def select_utterances(pool: Sequence[T], num_utterances: int, seed: int) -> list[T]:
    """A seeded sample of the calibration pool (the pool order is the prepared manifest's)."""
    if num_utterances < 1:
        raise ConfigError(f"calibration.num_utterances must be >= 1, got {num_utterances}")
    if num_utterances > len(pool):
        raise ConfigError(
            f"calibration.num_utterances is {num_utterances} but the calibration set has only "
            f"{len(pool)} utterances: lower it or add sentences/voices to data.calibration_set"
        )
    indices = sorted(random.Random(seed).sample(range(len(pool)), num_utterances))
    return [pool[i] for i in indices]
