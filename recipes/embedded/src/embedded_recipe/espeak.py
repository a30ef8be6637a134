"""espeak-ng speech for training variety (formant synthesis: robotic, but many accents and timbres)."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile as sf

from nemo_ptq.errors import DataError

from embedded_recipe.synthesis import Utterance

ESPEAK_WORDS_PER_MINUTE = 175  # espeak-ng's default rate; Utterance.speed scales it


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(utterance: Utterance, text: str) -> tuple[np.ndarray, int]:
    """(samples, sample rate) of one clip; the voice is `language+variant`, e.g. en-gb+m3."""
    rate = str(round(ESPEAK_WORDS_PER_MINUTE * utterance.speed))
    result = subprocess.run(["espeak-ng", "-v", utterance.voices[0], "-s", rate, "--stdout", text],
                            capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise DataError(f"espeak-ng failed for voice {utterance.voices[0]}: {result.stderr.decode()[:200]}")
    samples, sample_rate = sf.read(io.BytesIO(result.stdout), dtype="float32")
    return samples, sample_rate
