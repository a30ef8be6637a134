"""Export-based backends on NeMo CTC models that are not QuartzNet: a small Citrinet (squeeze-excite,
strided residuals, BPE vocabulary) and a small Conformer-CTC (attention, LayerNorm, conv module),
both with random weights, wrapped as `NemoCTC` the way the fuse stage hands them on. Every
backend's run on the Citrinet is in the contract template (test_backend_contract.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from conftest import nemo_ctc
from nemo_ptq.backends import get_backend
from nemo_ptq.errors import ConfigError, UnsupportedModelError

FEATURES = 80
CALIBRATION = {"num_utterances": 3, "seed": 0}
# Conformer: quantizing its residual/positional adds costs far more accuracy than it saves time.
CONFORMER_ORT = {"op_types_to_quantize": ["Conv", "MatMul", "Gemm"]}


@pytest.fixture(scope="module")
def conformer(tokenizer_dir):
    from nemo_ptq.models.architectures_other import conformer_config

    return nemo_ctc(conformer_config(tokenizer_dir, features=FEATURES))


def _features(count: int, frames: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((FEATURES, frames)).astype(np.float32) for _ in range(count)]


def _quantize_and_run(tmp_path, wrapped, card, entry):
    backend = get_backend("v", {**entry, "calibration": CALIBRATION}, card)
    backend.calibrate(wrapped, iter(_features(3, 240, seed=0)), tmp_path / "cal")
    backend.quantize(wrapped, tmp_path / "cal", tmp_path / "q")
    features = _features(1, 400, seed=5)[0][None]
    with torch.inference_mode():
        reference = wrapped(torch.from_numpy(features)).numpy()
    return backend, backend.load(tmp_path / "q", threads=1)(features), reference


def _check_output(log_probs, reference, card):
    frames = 400 // card["subsampling_factor"]
    assert log_probs.shape == reference.shape == (1, frames, len(card["vocabulary"]) + 1)
    assert np.allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-3)
    agreement = (log_probs.argmax(-1) == reference.argmax(-1)).mean()
    assert agreement >= 0.9, f"argmax agrees with FP32 on {agreement:.0%} of frames"
    assert np.abs(log_probs - reference).max() < 1.0


def test_neither_model_has_the_eager_rewrite(citrinet, conformer):
    from nemo_ptq.models.fused import rewrite

    for model, _, card in (citrinet, conformer):
        assert card["tokenizer"] == "bpe"
        with pytest.raises(UnsupportedModelError):
            rewrite(model)


def test_conformer_ort_keeps_softmax_layernorm_and_attention_products_float(tmp_path, conformer):
    import onnxruntime

    _, wrapped, card = conformer
    entry = {"backend": "ort", **CONFORMER_ORT}
    quantizer, log_probs, reference = _quantize_and_run(tmp_path, wrapped, card, entry)
    _check_output(log_probs, reference, card)
    info = quantizer.describe(tmp_path / "q")
    # every conv and linear layer but the CTC decoder
    assert {name for name, p in info.layer_precisions.items() if p != "int8"} == {"decoder.decoder_layers.0"}

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(tmp_path / "q" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Softmax" in ops and "LayerNormalization" in ops and "QLinearSoftmax" not in ops
    assert ops.count("MatMul") >= 4  # Q.K^T and attention x V, two layers: float
    # per layer: content scores, relative-position scores, weighted sum of the values
    assert "attention products (MatMuls of two activations) in INT8: 0 of 6" in info.notes


def test_conformer_ort_can_run_the_attention_products_in_int8(tmp_path, conformer):
    _, wrapped, card = conformer
    entry = {"backend": "ort", **CONFORMER_ORT, "attention_matmuls": True}
    quantizer, log_probs, reference = _quantize_and_run(tmp_path, wrapped, card, entry)
    _check_output(log_probs, reference, card)
    info = quantizer.describe(tmp_path / "q")
    assert "attention products (MatMuls of two activations) in INT8: 6 of 6" in info.notes
    assert {name for name, p in info.layer_precisions.items() if p != "int8"} == {"decoder.decoder_layers.0"}


def test_conformer_ov_reports_what_stays_float(tmp_path, conformer):
    _, wrapped, card = conformer
    quantizer, log_probs, reference = _quantize_and_run(tmp_path, wrapped, card, {"backend": "ov"})
    _check_output(log_probs, reference, card)
    precisions = quantizer.describe(tmp_path / "q").layer_precisions
    floats = {name for name, p in precisions.items() if p != "int8"}
    # NNCF leaves the relative-position projection (input: a constant table) in float.
    assert floats == {f"encoder.layers.{i}.self_attn.linear_pos" for i in range(2)}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["citrinet", "conformer"])
def test_pt2e_static_shapes(tmp_path, request, model):
    """PT2E on non-QuartzNet models compiles with static shapes only (Inductor's INT8 lowering
    fails on these graphs with dynamic shapes), which recompiles per input length: slow."""
    _, wrapped, card = request.getfixturevalue(model)
    entry = {"backend": "pt2e", "shapes": "per_length"}
    quantizer, log_probs, reference = _quantize_and_run(tmp_path, wrapped, card, entry)
    _check_output(log_probs, reference, card)
    info = quantizer.describe(tmp_path / "q")
    # Citrinet: every conv in INT8, only the squeeze-excitation Linear layers float (small MACs).
    # Conformer: some layers stay float (README), but over 90 % of the MACs run in INT8.
    if model == "citrinet":
        assert all(layer["precision"] == "int8" for layer in info.layers if layer["kind"] != "Linear")
    assert info.int8_weight_mac_fraction > 0.9


def test_pt2e_buckets_need_the_quartznet_rewrite(tmp_path, citrinet):
    _, wrapped, card = citrinet
    backend = get_backend("v", {"backend": "pt2e", "calibration": CALIBRATION}, card)
    with pytest.raises(ConfigError, match="set shapes: per_length"):
        backend.calibrate(wrapped, iter(_features(1, 240, seed=0)), tmp_path / "cal")


# Parameter counts on NVIDIA's model cards (stt_en_citrinet_256: 10.3 M with a 1024-token
# decoder; stt_en_conformer_ctc_small: 13 M). The benchmark's models use a 48-token decoder.
@pytest.mark.parametrize(("name", "published_millions"), [("citrinet_256", 10.3), ("conformer_ctc_small", 13.0)])
def test_benchmark_architectures_have_the_published_size(tokenizer_dir, name, published_millions):
    from nemo_ptq.models.architectures_other import build_bpe_ctc, published_size_config

    model = build_bpe_ctc(published_size_config(name, tokenizer_dir))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - published_millions) / published_millions < 0.1, f"{name}: {millions:.2f} M parameters"


def test_unknown_benchmark_architecture_names_the_choices(tokenizer_dir):
    from nemo_ptq.models.architectures_other import published_size_config

    with pytest.raises(ValueError, match="citrinet_256, conformer_ctc_small"):
        published_size_config("citrinet_1024", tokenizer_dir)
