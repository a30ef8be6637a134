"""Audio helpers: resampling, speed perturbation and writing 16 kHz mono WAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


def to_16k(samples: np.ndarray, source_rate: int) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if source_rate == SAMPLE_RATE:
        return samples
    return soxr.resample(samples, source_rate, SAMPLE_RATE).astype(np.float32)


def speed_perturb(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (pitch moves with it, as in Kaldi's speed perturbation)."""
    return soxr.resample(samples, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def peak_normalize(samples: np.ndarray, peak: float = 0.9) -> np.ndarray:
    top = float(np.max(np.abs(samples))) if samples.size else 0.0
    return samples if top == 0.0 else samples * (peak / top)


def write_wav(path: Path, samples: np.ndarray) -> float:
    """Write 16 kHz 16-bit PCM atomically (a cut-off run never leaves half a file); returns seconds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.wav")
    sf.write(partial, samples, SAMPLE_RATE, subtype="PCM_16")
    partial.replace(path)
    return len(samples) / SAMPLE_RATE


def read_16k(path: Path) -> np.ndarray:
    samples, rate = sf.read(path, dtype="float32", always_2d=False)
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    return to_16k(samples, rate)
