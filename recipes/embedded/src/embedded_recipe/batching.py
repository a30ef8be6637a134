"""Batches of similar duration, so that CPU time goes to speech rather than to padding.

NeMo's non-tarred char dataset only shuffles; with clips from 1 s to 18 s, a random batch is
mostly padding. Here each epoch shuffles, sorts within large windows, cuts batches up to a budget
of padded seconds, and shuffles the batches (semi-sorted batching).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


class DurationBatchSampler:
    """Batch sampler whose batches hold at most `batch_seconds` of padded audio."""

    def __init__(self, durations: Sequence[float], batch_seconds: float, *, seed: int, window_batches: int = 32):
        if not durations:
            raise ValueError("no utterances to batch")
        if max(durations) > batch_seconds:
            raise ValueError(f"batch_seconds {batch_seconds} is shorter than the longest clip ({max(durations):.1f} s)")
        self.durations = list(durations)
        self.batch_seconds = batch_seconds
        self.seed = seed
        self.window = window_batches * max(1, int(batch_seconds / (sum(durations) / len(durations))))
        self.epoch = 0
        # Lightning calls set_epoch on `batch_sampler.sampler`; pointing it here gives each epoch its order.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.durations)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start:start + self.window], key=self.durations.__getitem__)
            batches += self._cut(window)
        rng.shuffle(batches)
        return batches

    def _cut(self, sorted_indices: list[int]) -> list[list[int]]:
        batches, current = [], []
        for index in sorted_indices:
            # Sorted ascending, so the newest clip is the longest: padded size = count * its duration.
            if current and (len(current) + 1) * self.durations[index] > self.batch_seconds:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))
