"""NeMo's own FP32 eager model: the baseline runner, its size, and the latency input features."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nemo_ptq.evaluation.latency import speech_like_signal
from nemo_ptq.models.fp32 import nemo_log_probs
from nemo_ptq.models.loading import load_nemo

MODEL_FILE = "model.nemo"


def load_fp32(model_dir: Path) -> Any:
    return load_nemo(Path(model_dir) / MODEL_FILE).eval()


class NemoEagerRunner:
    """features [1, F, T] -> log-probs [1, T', V+1] through NeMo's own forward (masking and all)."""

    def __init__(self, model: Any):
        self.model = model.eval()

    def __call__(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return nemo_log_probs(self.model, torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()

    def batch(self, features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """A zero-padded batch, padding masked by NeMo's encoder (a `BatchRunner`)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            return nemo_log_probs(self.model, x, torch.from_numpy(np.asarray(lengths, dtype=np.int64))).numpy()


def latency_features(model: Any, seconds: float, sample_rate: int) -> np.ndarray:
    """The fixed test signal through the model's own preprocessor, trimmed to the valid frames."""
    audio = torch.from_numpy(speech_like_signal(seconds, sample_rate))[None]
    with torch.inference_mode():
        features, length = model.preprocessor(input_signal=audio, length=torch.tensor([audio.shape[-1]]))
    return features[:, :, : int(length[0])].numpy().astype(np.float32)


def state_dict_bytes(model: Any) -> int:
    """Bytes of the serialized FP32 weights (what an INT8 state dict compares with)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()
