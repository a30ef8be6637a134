"""Features from the model's own preprocessor, so later stages can skip it and quantize the
encoder/decoder alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from nemo_ptq.errors import DataError


NEMO_DEFAULT_SAMPLE_RATE = 16000  # what NeMo's audio preprocessors use when their config names none


def model_sample_rate(model: Any) -> int:
    """The rate the model's audio must have: its preprocessor's, else the model config's, else NeMo's
    default; the model card (fetch-pretrained) records the same value."""
    cfg = model.cfg
    return int(cfg.preprocessor.get("sample_rate", cfg.get("sample_rate", NEMO_DEFAULT_SAMPLE_RATE)))


class FeatureExtractor:
    """audio [samples] -> float32 [feature_dim, frames], trimmed to the valid frames.

    The preprocessor runs in eval mode (NeMo dithers only in training) and pads its output to a
    multiple of `pad_to` frames; those pad frames are cut off here and never stored.
    """

    def __init__(self, model: Any):
        self.preprocessor = model.preprocessor.eval()
        self.sample_rate = model_sample_rate(model)
        self.feature_dim = int(self(np.zeros(self.sample_rate, dtype=np.float32)).shape[0])

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            feats, lengths = self.preprocessor(
                input_signal=torch.from_numpy(samples)[None], length=torch.tensor([samples.shape[0]])
            )
        frames = int(lengths[0])
        if frames < 2:
            raise DataError(f"the clip ({samples.shape[0]} samples) gives {frames} feature frame(s): "
                            "it is too short to transcribe, remove it")
        features = feats[0, :, :frames].numpy().astype(np.float32)
        if not np.isfinite(features).all():
            raise DataError("the model's preprocessor produced non-finite features for this clip: "
                            "check that it is not corrupt, or remove it")
        return features
