"""The features that later stages read instead of audio, so they can quantize the acoustic model
alone: the model's own preprocessor, run where the deployment runs it.

When fetch-pretrained could export the preprocessor (`frontend.onnx`, see
`nemo_ptq.models.frontend`), the features come from that graph in ONNX Runtime: the very
computation inside every waveform-input artifact, so the transcripts evaluate reports are the ones
a deployment fed audio gets (NeMo's STFT and ONNX's differ in float rounding, enough to move an
INT8 activation across a quantization step). Otherwise NeMo's preprocessor computes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nemo_ptq.errors import DataError
from nemo_ptq.models.card import read_card

NEMO_DEFAULT_SAMPLE_RATE = 16000  # what NeMo's audio preprocessors use when their config names none


def model_sample_rate(model: Any) -> int:
    """The rate the model's audio must have: its preprocessor's, else the model config's, else NeMo's
    default; the model card (fetch-pretrained) records the same value."""
    cfg = model.cfg
    return int(cfg.preprocessor.get("sample_rate", cfg.get("sample_rate", NEMO_DEFAULT_SAMPLE_RATE)))


class FeatureExtractor:
    """audio [samples] -> float32 [feature_dim, frames], trimmed to the valid frames and checked."""

    source = ""  # what computes the features, for the prepared summary
    sample_rate = NEMO_DEFAULT_SAMPLE_RATE

    def _features(self, samples: np.ndarray) -> tuple[np.ndarray, int]:
        """[feature_dim, frames (maybe padded)] and the count of valid frames."""
        raise NotImplementedError

    def _set_feature_dim(self) -> None:
        self.feature_dim = int(self(np.zeros(self.sample_rate, dtype=np.float32)).shape[0])

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if samples.size == 0:  # an exported graph fails on it rather than giving 0 frames
            features, frames = None, 0
        else:
            features, frames = self._features(np.ascontiguousarray(samples, dtype=np.float32))
        if frames < 2:
            raise DataError(f"the clip ({samples.shape[0]} samples) gives {frames} feature frame(s): "
                            "it is too short to transcribe, remove it")
        features = np.ascontiguousarray(features[:, :frames], dtype=np.float32)
        if not np.isfinite(features).all():
            raise DataError("the model's preprocessor produced non-finite features for this clip: "
                            "check that it is not corrupt, or remove it")
        return features


class NemoFeatureExtractor(FeatureExtractor):
    """NeMo's preprocessor in eval mode (NeMo dithers only in training). It pads its output to a
    multiple of `pad_to` frames; those pad frames are cut off here and never stored."""

    source = "NeMo preprocessor"

    def __init__(self, model: Any):
        self.preprocessor = model.preprocessor.eval()
        self.sample_rate = model_sample_rate(model)
        self._set_feature_dim()

    def _features(self, samples: np.ndarray) -> tuple[np.ndarray, int]:
        import torch

        with torch.inference_mode():
            feats, lengths = self.preprocessor(
                input_signal=torch.from_numpy(samples)[None], length=torch.tensor([samples.shape[0]])
            )
        return feats[0].numpy(), int(lengths[0])


class OnnxFeatureExtractor(FeatureExtractor):
    """The exported preprocessor (fetch-pretrained's frontend.onnx) in ONNX Runtime."""

    source = "frontend.onnx in ONNX Runtime"

    def __init__(self, frontend_onnx: Path, sample_rate: int, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(frontend_onnx), options,
                                                    providers=["CPUExecutionProvider"])
        self.sample_rate = int(sample_rate)
        self._set_feature_dim()

    def _features(self, samples: np.ndarray) -> tuple[np.ndarray, int]:
        from nemo_ptq.models.frontend import waveform_feed

        features, lengths = self.session.run(None, waveform_feed(samples))
        return features[0], int(lengths[0])


def model_feature_extractor(model_path: Path) -> FeatureExtractor:
    """The extractor for a fetched model (model.nemo with fetch-pretrained's card beside it): its
    frontend graph in ONNX Runtime when there is one, else NeMo's preprocessor (loads the model)."""
    from nemo_ptq.models.frontend import frontend_path

    model_dir = Path(model_path).parent
    card = read_card(model_dir)
    frontend_onnx = frontend_path(model_dir, card)
    if frontend_onnx is not None:
        return OnnxFeatureExtractor(frontend_onnx, int(card["sample_rate"]))
    from nemo_ptq.models.loading import load_nemo  # imports NeMo

    return NemoFeatureExtractor(load_nemo(model_path))
