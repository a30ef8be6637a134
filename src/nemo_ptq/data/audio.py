"""Decoding, checking and writing audio. Prepared audio is mono 16-bit PCM at the model's rate."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf

from nemo_ptq.errors import DataError


def load_audio(path: Path, *, sample_rate: int, max_duration_s: float, downmix: bool = False) -> np.ndarray:
    """Mono float32 samples at `sample_rate`, or a DataError that says what is wrong and what to do.

    Audio below the model's rate is rejected rather than upsampled: upsampled telephone-band audio
    lacks the high frequencies the model was trained on and would silently inflate WER.
    """
    if not Path(path).is_file():
        raise DataError(f"audio file {path} not found: fix its path or remove it")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise _undecodable(path, err) from None
    if info.frames <= 0:
        raise DataError(f"{path} contains no samples: remove it or replace it with a non-empty recording")
    if info.channels > 1 and not downmix:
        raise DataError(f"{path} has {info.channels} channels but the model takes mono: convert it "
                        f"(sox {path} -c 1 mono.wav) or set downmix: true on this set")
    if info.samplerate < sample_rate:
        raise DataError(f"{path} is sampled at {info.samplerate} Hz, below the model's {sample_rate} Hz: "
                        f"upsampled narrow-band audio would distort WER; supply audio at {sample_rate} Hz "
                        f"or more, or use a model trained for {info.samplerate} Hz")
    duration = info.frames / info.samplerate
    if duration > max_duration_s:
        raise DataError(f"{path} lasts {duration:.1f} s, longer than data.max_duration_s = {max_duration_s} s: "
                        "split it into shorter utterances or raise max_duration_s")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise _undecodable(path, err) from None
    if samples.shape[0] == 0:  # a header that promises frames the file does not hold
        raise DataError(f"{path} contains no samples: remove it or replace it with a non-empty recording")
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise DataError(f"{path} contains NaN or infinite samples: re-export it, or remove it")
    if rate != sample_rate:
        import librosa  # slow import, needed only when resampling

        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(mono, dtype=np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """int16 samples that read back (soundfile, float32) as exactly `pcm / 32768`."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    sf.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _undecodable(path: Path, err: Exception) -> DataError:
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return DataError(f"{path} cannot be decoded ({reason}): re-encode it as WAV or FLAC, or remove it")
