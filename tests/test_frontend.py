"""The model's preprocessor as ONNX, and ORT artifacts that take audio: the frontend equals NeMo's
preprocessor, and the waveform-input model gives the feature path's log-probs, in plain
onnxruntime, float and INT8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from nemo_ptq.backends import get_backend
from nemo_ptq.data.features import NemoFeatureExtractor
from nemo_ptq.errors import UnsupportedModelError
from nemo_ptq.models import frontend
from nemo_ptq.models.loading import ModelSource, describe

SAMPLE_RATE = 16000
# odd lengths too: the STFT's frame count and NeMo's valid-frame count differ by one there
LENGTHS = [8000 + 5, 2 * SAMPLE_RATE + 123, 7 * SAMPLE_RATE]


def _clip(samples: int, seed: int) -> np.ndarray:
    """Speech-like levels: noise under a slow envelope, quantized to 16 bits as prepared audio is."""
    rng = np.random.default_rng(seed)
    envelope = 0.05 + 0.2 * np.abs(np.sin(np.linspace(0, 12, samples)))
    return (np.round(rng.standard_normal(samples) * envelope * 32768) / 32768).astype(np.float32)


def _session(path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    """What fetch-pretrained writes: card.json and frontend.onnx (model.nemo is not needed here)."""
    folder = tmp_path_factory.mktemp("model")
    name, unsupported = frontend.write_frontend(tiny_model, folder, SAMPLE_RATE)
    assert (name, unsupported) == (frontend.FRONTEND_FILE, "")
    card = describe(tiny_model, ModelSource.parse("arch:quartznet_tiny"))
    (folder / "card.json").write_text(json.dumps({**card.to_json(), "frontend": name}))
    return folder


@pytest.mark.parametrize("samples", LENGTHS)
def test_frontend_equals_nemo_preprocessor(tiny_model, model_dir, samples):
    clip = _clip(samples, seed=samples)
    expected = NemoFeatureExtractor(tiny_model)(clip)  # what prepare stores: valid frames only
    with torch.inference_mode():
        eager, eager_length = frontend.WaveformFrontend(tiny_model.preprocessor)(
            torch.from_numpy(clip)[None], torch.tensor([samples]))
    assert eager.shape[1:] == expected.shape and int(eager_length[0]) == expected.shape[1]
    assert np.array_equal(eager[0].numpy(), expected)  # same ops, same order: bit-exact
    features, length = _session(model_dir / frontend.FRONTEND_FILE).run(None, frontend.waveform_feed(clip))
    assert features.shape[1:] == expected.shape and int(length[0]) == expected.shape[1]
    assert np.abs(features[0] - expected).max() < 1e-3  # ONNX's STFT rounds differently


def test_unsupported_preprocessor_is_reported(tmp_path):
    class NotNemo:
        preprocessor = torch.nn.Identity()

    name, why = frontend.write_frontend(NotNemo(), tmp_path, SAMPLE_RATE)
    assert name is None and "AudioToMelSpectrogramPreprocessor" in why
    assert not (tmp_path / frontend.FRONTEND_FILE).exists()
    with pytest.raises(UnsupportedModelError, match="frame_splicing"):
        class Spliced:
            featurizer = type("FilterbankFeatures", (), {"frame_splicing": 3, "normalize": "per_feature"})()

        frontend.WaveformFrontend(Spliced())


@pytest.mark.parametrize("entry", [{"backend": "ort", "precision": "fp32"},
                                   {"backend": "ort", "calibration": {"num_utterances": 4, "seed": 0}},
                                   {"backend": "ort", "precision": "dynamic"}], ids=["fp32", "int8", "dynamic"])
def test_waveform_model_gives_the_feature_path_log_probs(tmp_path, tiny_model, tiny_fused, model_dir, entry):
    card = json.loads((model_dir / "card.json").read_text())
    backend = get_backend("v", entry, card, model_dir)
    extractor = NemoFeatureExtractor(tiny_model)
    calibration = [extractor(_clip(3 * SAMPLE_RATE, seed)) for seed in range(4)]
    backend.calibrate(tiny_fused, iter(calibration if backend.calibration_sample() else []), tmp_path / "cal")
    backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")

    # A plain onnxruntime user: audio in, the model's own preprocessor inside, one graph.
    graph = onnx.load(str(tmp_path / "q" / "model_waveform.onnx"))
    assert [i.name for i in graph.graph.input] == [frontend.WAVEFORM, frontend.WAVEFORM_LENGTH]
    assert {p.key: p.value for p in graph.metadata_props}["vocab_size"] == str(len(card["vocabulary"]) + 1)
    waveform_session = _session(tmp_path / "q" / "model_waveform.onnx")
    runner = backend.load(tmp_path / "q", threads=1)
    for samples in LENGTHS:
        clip = _clip(samples, seed=samples + 1)
        from_audio = waveform_session.run(None, frontend.waveform_feed(clip))[0]
        from_features = runner(extractor(clip)[None])
        assert from_audio.shape == from_features.shape
        # float: rounding only. INT8: a feature rounding step may move a value across a
        # quantization step. The random-weight model's near-uniform outputs flip argmax on
        # near-ties; evaluate measures transcript agreement on the real model.
        exact = entry.get("precision") == "fp32"
        assert np.abs(from_audio - from_features).max() < (1e-3 if exact else 0.5)
        assert (from_audio.argmax(-1) == from_features.argmax(-1)).mean() >= (0.99 if exact else 0.9)
    assert backend.load_waveform(tmp_path / "q", threads=1)(clip).shape == from_features.shape


def test_no_waveform_model_without_a_frontend(tmp_path, tiny_fused, model_dir):
    """A card without a frontend (fetch-pretrained could not export it): features-only artifact."""
    card = {key: value for key, value in json.loads((model_dir / "card.json").read_text()).items()
            if key != "frontend"}
    backend = get_backend("v", {"backend": "ort", "precision": "fp32"}, card, model_dir)
    backend.calibrate(tiny_fused, iter([]), tmp_path / "cal")
    backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
    assert not (tmp_path / "q" / "model_waveform.onnx").exists()
    assert backend.load_waveform(tmp_path / "q", threads=1) is None
