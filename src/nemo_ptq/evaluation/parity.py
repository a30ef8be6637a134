"""Deployment parity: do the artifact's audio-input paths give the transcripts evaluate reports?

Evaluate transcribes from the stored features (the model's own preprocessor, run by prepare: the
exported frontend graph in ONNX Runtime where there is one, the one inside every waveform graph).
A deployment is fed audio instead, so for every eval utterance the prepared WAV (16-bit, read as
float32 the way soundfile gives it to any user) goes through the waveform-input model, and its
transcript and log-probs are compared with the feature path's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from nemo_ptq.backends.base import Runner, WaveformRunner
from nemo_ptq.data.prepared import PreparedSet
from nemo_ptq.errors import DataError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.evaluation.transcripts import Transcript


def read_samples(path) -> np.ndarray:
    """A prepared clip as float32 samples, exactly what prepare computed its features from."""
    try:
        samples, _ = sf.read(str(path), dtype="float32")
    except (sf.LibsndfileError, RuntimeError):
        raise DataError(f"{path} is missing or unreadable: rerun the prepare stage (dvc repro prepare)") from None
    return samples


def waveform_parity(waveform_runner: WaveformRunner, runner: Runner, vocabulary: CtcVocabulary,
                    sets: Sequence[PreparedSet], transcripts: dict[str, list[Transcript]],
                    progress: bool = True) -> dict:
    """Identical transcripts (share of utterances) and the largest log-prob difference between
    the waveform-input model and the feature path, over every eval utterance."""
    hypotheses = {(name, row.id): row.hypothesis for name, rows in transcripts.items() for row in rows}
    work = [(prepared_set.name, utt) for prepared_set in sets for utt in prepared_set.utterances()]
    identical, max_diff, frame_mismatches = 0, 0.0, 0
    for set_name, utt in tqdm(work, desc="waveform parity", unit="utt", disable=not progress, file=sys.stderr):
        from_audio = waveform_runner(read_samples(utt.audio_path))
        from_features = runner(utt.features()[None].astype(np.float32))
        if from_audio.shape != from_features.shape:
            frame_mismatches += 1
        else:
            max_diff = max(max_diff, float(np.abs(from_audio - from_features).max()))
        hypothesis = vocabulary.transcript(from_audio)
        identical += hypothesis == hypotheses[(set_name, utt.id)]
    return {
        "utterances": len(work),
        "identical_transcripts": identical,
        "agreement": identical / max(1, len(work)),
        "max_abs_logprob_diff": max_diff,
        "frame_count_mismatches": frame_mismatches,
    }
