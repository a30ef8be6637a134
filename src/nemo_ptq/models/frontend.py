"""The model's own preprocessor as an ONNX graph, so a deployment can be fed waveforms.

NeMo's `FilterbankFeatures` computes its STFT as a complex tensor, which the ONNX exporter cannot
take; `WaveformFrontend` runs the same steps on the featurizer's own buffers (window, mel
filterbank) and settings with a real-valued STFT, and calls NeMo's own `normalize_batch`.
`waveform_model` prepends that graph to an exported acoustic model (float or quantized):

    waveform [batch, samples] float32, waveform_length [batch] int64
        -> frontend (float) -> audio_signal, length -> acoustic model -> logprobs

For one utterance (batch 1) the features equal the preprocessor's, trimmed to the valid frames
(what the prepare stage stores), to float rounding; `tests/test_frontend.py` checks that. Longer
batches are padded to the longest clip, and the acoustic model is unmasked, so a padded clip's
last frames may differ. Settings the graph does not reproduce raise UnsupportedModelError.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from nemo_ptq.errors import UnsupportedModelError
from nemo_ptq.models import export

WAVEFORM = "waveform"
WAVEFORM_LENGTH = "waveform_length"
FEATURES_LENGTH = "features_length"
PREFIX = "frontend/"  # node and tensor names of the frontend part in the merged graph
FRONTEND_FILE = "frontend.onnx"  # written by fetch-pretrained next to model.nemo


class WaveformFrontend(nn.Module):
    """waveform [B, S], length [B] -> features [B, F, T], feature lengths [B] (eval mode: no dither)."""

    def __init__(self, preprocessor: Any):
        super().__init__()
        featurizer = getattr(preprocessor, "featurizer", None)
        if type(featurizer).__name__ != "FilterbankFeatures":
            raise UnsupportedModelError(
                f"cannot export the {type(preprocessor).__name__} preprocessor to ONNX: only NeMo's "
                "AudioToMelSpectrogramPreprocessor (FilterbankFeatures) is supported")
        if int(featurizer.frame_splicing) != 1:
            raise UnsupportedModelError("cannot export a preprocessor with frame_splicing > 1 to ONNX")
        if featurizer.normalize not in (None, "", "per_feature", "all_features"):
            raise UnsupportedModelError(f"cannot export the preprocessor's normalize={featurizer.normalize!r} to ONNX")
        self.featurizer = featurizer

    def forward(self, waveform: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from nemo.collections.asr.parts.preprocessing.features import normalize_batch

        fz = self.featurizer
        feature_length = fz.get_seq_len(length)
        x = waveform
        if fz.stft_pad_amount is not None:
            x = nn.functional.pad(x.unsqueeze(1), (fz.stft_pad_amount, fz.stft_pad_amount), "constant").squeeze(1)
        if fz.preemph is not None:
            valid = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < length.unsqueeze(1)
            x = torch.cat((x[:, :1], x[:, 1:] - fz.preemph * x[:, :-1]), dim=1).masked_fill(~valid, 0.0)
        spectrum = torch.stft(x, n_fft=fz.n_fft, hop_length=fz.hop_length, win_length=fz.win_length,
                              center=not fz.exact_pad, window=fz.window.to(torch.float), pad_mode="constant",
                              return_complex=False)
        x = torch.sqrt(spectrum.pow(2).sum(-1))
        if fz.mag_power != 1.0:
            x = x.pow(fz.mag_power)
        x = torch.matmul(fz.fb.to(x.dtype), x)
        if fz.log:
            guard = fz.log_zero_guard_value_fn(x)
            x = torch.log(x + guard) if fz.log_zero_guard_type == "add" else torch.log(torch.clamp(x, min=guard))
        if fz.normalize:
            x, _, _ = normalize_batch(x, feature_length, normalize_type=fz.normalize)
        # The STFT has one frame more than NeMo counts valid: keep the longest clip's valid frames
        # (an arange on a tensor, so the exported graph keeps the length dynamic).
        frames = torch.arange(feature_length.max(), device=x.device)
        x = x.index_select(2, frames)
        valid_frames = frames.unsqueeze(0) < feature_length.unsqueeze(1)
        return x.masked_fill(~valid_frames.unsqueeze(1), fz.pad_value), feature_length


def export_frontend(preprocessor: Any, path: Path, sample_rate: int) -> Path:
    """The frontend alone as ONNX (TorchScript exporter, opset 17: the STFT op)."""
    frontend = WaveformFrontend(preprocessor).eval()
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 2 * sample_rate)).astype(np.float32))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            frontend, (0.1 * example, torch.tensor([example.shape[1]])), str(path), dynamo=False,
            opset_version=export.OPSET, input_names=[WAVEFORM, WAVEFORM_LENGTH],
            output_names=[export.INPUT, FEATURES_LENGTH],
            dynamic_axes={WAVEFORM: {0: "batch", 1: "samples"}, WAVEFORM_LENGTH: {0: "batch"},
                          export.INPUT: {0: "batch", 2: "frames"}, FEATURES_LENGTH: {0: "batch"}},
        )
    return path


def write_frontend(model: Any, out_dir: Path, sample_rate: int) -> tuple[str | None, str]:
    """The model's preprocessor as out_dir/frontend.onnx: (file name, "") or (None, why not)."""
    try:
        export_frontend(model.preprocessor, Path(out_dir) / FRONTEND_FILE, sample_rate)
    except UnsupportedModelError as err:
        return None, str(err)
    return FRONTEND_FILE, ""


def frontend_path(model_dir: Path | None, card: Mapping[str, Any]) -> Path | None:
    """The fetched model's frontend graph, if fetch-pretrained could export one."""
    if model_dir is None or not card.get("frontend"):
        return None
    path = Path(model_dir) / str(card["frontend"])
    return path if path.is_file() else None


def waveform_model(frontend_onnx: Path, acoustic: onnx.ModelProto) -> onnx.ModelProto:
    """One graph, waveform -> logprobs: the frontend (float) feeding an exported acoustic model
    (the deployable one, with its `length` input, float or quantized)."""
    frontend = onnx.load(str(frontend_onnx))
    frontend = onnx.compose.add_prefix(frontend, PREFIX, rename_inputs=False, rename_outputs=False)
    frontend.ir_version = acoustic.ir_version
    acoustic_opsets = {entry.domain: entry.version for entry in acoustic.opset_import}
    for entry in frontend.opset_import:  # merge_models needs one version per domain
        entry.version = acoustic_opsets.get(entry.domain, entry.version)
    io_map = [(export.INPUT, export.INPUT)]
    if any(graph_input.name == export.LENGTH for graph_input in acoustic.graph.input):
        io_map.append((FEATURES_LENGTH, export.LENGTH))
    merged = onnx.compose.merge_models(frontend, acoustic, io_map=io_map,
                                       outputs=[output.name for output in acoustic.graph.output])
    export.add_metadata(merged, {entry.key: entry.value for entry in acoustic.metadata_props})
    return merged


def waveform_feed(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of a waveform graph for one clip (mono float32 samples at the model's rate)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)[None]
    return {WAVEFORM: samples, WAVEFORM_LENGTH: np.array([samples.shape[1]], dtype=np.int64)}
