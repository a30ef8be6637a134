"""Latency: a fixed speech-like test signal, timing in alternating blocks, and robust summary statistics.

Timing on a shared CPU drifts by ±15 % between runs (NeMo FP32 eager, measured on this project's
2-core machines), so a variant is always timed in the same process as NeMo's FP32 eager model, in
alternating blocks of runs, and reported as a median.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def speech_like_signal(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Voiced harmonics with a wandering pitch, a ~4 Hz syllable envelope and noise bursts.

    Convolutional CTC models cost the same for any input of a given length; the signal only has
    to be realistic enough that activations (and thus any data-dependent kernels) look like speech.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.3 * t) + 10 * rng.standard_normal(n).cumsum() / np.sqrt(n)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 16))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
    fricatives = rng.standard_normal(n) * (rng.random(n // 1600 + 1).repeat(1600)[:n] > 0.8)
    signal = 0.3 * voiced * syllables + 0.05 * fricatives
    return (signal / np.abs(signal).max() * 0.5).astype(np.float32)


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    rtf: float  # median processing time / audio duration


def latency_stats(seconds: Sequence[float], audio_s: float) -> LatencyStats:
    if not seconds:
        raise ValueError("latency_stats needs at least one timed run")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    median = float(np.median(ms))
    return LatencyStats(median_ms=median, p90_ms=float(np.percentile(ms, 90)), rtf=median / 1000.0 / audio_s)


def time_in_blocks(
    calls: Mapping[str, Callable[[], object]], warmup_runs: int, timed_runs: int, rounds: int
) -> dict[str, list[float]]:
    """Warm each call up, then time `rounds` sweeps over the calls, each call a block of about
    timed_runs / rounds runs after one untimed run; the order rotates so no call always goes first.

    Blocks, not alternating single calls: ONNX Runtime's and OpenVINO's thread pools keep spinning
    after a call and slow the next call of another runtime down (OpenVINO INT8 measured 2.2x slower
    alternating with NeMo's eager model than in blocks); the untimed run lets that settle.
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup_runs):
            calls[name]()
    timings: dict[str, list[float]] = {name: [] for name in names}
    rounds = min(rounds, timed_runs)
    per_round = [timed_runs // rounds + (1 if r < timed_runs % rounds else 0) for r in range(rounds)]
    for round_index, block in enumerate(per_round):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            calls[name]()
            for _ in range(block):
                start = time.perf_counter()
                calls[name]()
                timings[name].append(time.perf_counter() - start)
    return timings
