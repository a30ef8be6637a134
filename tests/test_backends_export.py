"""Export-based backends (ort, pt2e, ov) on the tiny QuartzNet rewrite, beyond the contract
template (test_backend_contract.py): other presets and modes, deployable files, what quantize
really applies, and configs rejected by name."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
import torch

from nemo_ptq.backends import get_backend
from nemo_ptq.errors import BackendUnavailableError, CalibrationError, ConfigError
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY

CARD = {
    "class": "EncDecCTCModel", "vocabulary": list(QUARTZNET_VOCABULARY), "blank_id": len(QUARTZNET_VOCABULARY),
    "tokenizer": "char", "sample_rate": 16000, "feature_dim": 64, "subsampling_factor": 2,
    "preprocessor": {"window_size": 0.02, "window_stride": 0.01, "normalize": "per_feature"},
}
CALIBRATION = {"num_utterances": 4, "seed": 0}


def _features(count: int, frames: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((64, frames)).astype(np.float32) for _ in range(count)]


def _build(tmp_path, fused, entry: dict, name: str = "v"):
    backend = get_backend(name, entry, CARD)
    sample = backend.calibration_sample()
    backend.calibrate(fused, iter(_features(sample.num_utterances, 200, seed=0) if sample else []), tmp_path / "cal")
    backend.quantize(fused, tmp_path / "cal", tmp_path / "q")
    return backend, tmp_path / "q"


@pytest.fixture(scope="module")
def probe(tiny_fused):
    features = _features(1, 400, seed=7)[0][None]
    with torch.inference_mode():
        return features, tiny_fused(torch.from_numpy(features)).numpy()


def _agreement(log_probs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Frame argmax agreement, and signal-to-noise ratio (dB) of the log-probs around each frame's
    mean (a random-weight model's near-uniform outputs make argmax flip on near-ties)."""
    centred = reference - reference.mean(-1, keepdims=True)
    error = (log_probs - log_probs.mean(-1, keepdims=True)) - centred
    snr = 10 * np.log10((centred ** 2).sum() / max((error ** 2).sum(), 1e-30))
    return float((log_probs.argmax(-1) == reference.argmax(-1)).mean()), float(snr)


# variant entry, the convs that run in INT8: "all", "all but the logits layer" (ORT's presets keep
# the CTC decoder in float), or "none"; each backend's default variant is in the contract template
CASES = {
    "ort_int8": ({"backend": "ort", "calibration": CALIBRATION}, "all but logits"),
    "ort_int8_entropy": ({"backend": "ort", "calibration": {**CALIBRATION, "method": "entropy"}}, "all but logits"),
    "ort_fp32": ({"backend": "ort", "precision": "fp32"}, "none"),
    # sherpa-onnx's recipe: quantize_dynamic with u8 weights; ConvInteger writes int32, so float logits
    "ort_dynamic_u8": ({"backend": "ort", "precision": "dynamic", "preset": "ort_defaults", "weight_type": "u8"},
                       "all"),
    "pt2e_dynamic": ({"backend": "pt2e", "shapes": "dynamic", "calibration": CALIBRATION}, "all"),
    "ov_fp32": ({"backend": "ov", "precision": "fp32", "inference_precision": "f32"}, "none"),
}
TESTED = ("ort_int8_entropy", "ort_fp32", "ort_dynamic_u8", "pt2e_dynamic", "ov_fp32")  # ort_int8 is the template's


@pytest.mark.parametrize("case", TESTED)
def test_backend_runs_close_to_fp32_with_expected_int8_coverage(tmp_path, tiny_fused, probe, case):
    entry, int8_convs = CASES[case]
    backend, artifact = _build(tmp_path, tiny_fused, entry)
    features, reference = probe
    log_probs = backend.load(artifact, threads=1)(features)
    assert log_probs.shape == reference.shape
    argmax, snr = _agreement(log_probs, reference)
    if int8_convs == "none":  # float runtimes: the same function up to float rounding
        assert np.abs(log_probs - reference).max() < 1e-3
    else:
        assert argmax >= 0.8 and snr >= 25.0, f"{case}: argmax {argmax:.3f}, SNR {snr:.1f} dB"
        assert _logit_levels(log_probs) > 1000, "8-bit logits: the CTC output should be float"
    info = backend.describe(artifact)
    assert len(info.layer_precisions) == 31  # 30 encoder convs + the decoder, every one accounted for
    float_layers = {name for name, precision in info.layer_precisions.items() if precision != "int8"}
    expected = {"all": set(), "none": set(info.layer_precisions), "all but logits": {"decoder"}}
    assert float_layers == expected[int8_convs]
    if int8_convs != "none":
        assert 0.95 < info.int8_weight_mac_fraction <= 1.0


def _logit_levels(log_probs: np.ndarray) -> int:
    """Distinct log-prob gaps to each frame's best class: at most 2 x 256 when the logits that
    log-softmax reads are 8-bit."""
    return len(np.unique(np.round(log_probs - log_probs.max(-1, keepdims=True), 5)))


def test_ort_int8_model_is_plain_onnx_that_reproduces_the_runner(tmp_path, tiny_fused, probe):
    import onnxruntime

    backend, artifact = _build(tmp_path, tiny_fused, CASES["ort_int8"][0])
    features, _ = probe
    session = onnxruntime.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    # sherpa-onnx's NeMo CTC signature: features [N, C, T] then lengths [N] int64, by position.
    inputs = session.get_inputs()
    assert [(i.name, i.type) for i in inputs] == [("audio_signal", "tensor(float)"), ("length", "tensor(int64)")]
    batch = np.concatenate([features, features])
    plain = session.run(None, {inputs[0].name: batch, inputs[1].name: np.full(2, batch.shape[-1], np.int64)})[0]
    runner = backend.load(artifact, threads=1)(features)
    assert np.array_equal(plain[:1], runner) and np.array_equal(plain[1:], runner)

    model = onnx.load(str(artifact / "model.onnx"))
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    produced_by = {out: n.op_type for n in model.graph.node for out in n.output}
    logits = convs.pop("/decoder/Conv")
    assert all(produced_by.get(c.input[0]) == "DequantizeLinear" and produced_by.get(c.input[1]) == "DequantizeLinear"
               for c in convs.values()), "every encoder Conv should read a dequantized input and weight (QDQ)"
    assert produced_by.get(logits.input[0]) == "DequantizeLinear" and logits.input[1] not in produced_by, \
        "the CTC decoder should read 8-bit activations with float weights, and write float logits"
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vocab_size"] == str(len(QUARTZNET_VOCABULARY) + 1)
    assert meta["subsampling_factor"] == "2" and meta["normalize_type"] == "per_feature"
    assert meta["blank_id"] == str(len(QUARTZNET_VOCABULARY))
    assert meta["preprocessor.window_stride"] == "0.01" and meta["sample_rate"] == "16000"
    tokens = (artifact / "tokens.txt").read_text().splitlines()
    assert tokens[0] == "\u2581 0" and tokens[-1] == f"<blk> {len(QUARTZNET_VOCABULARY)}"


def test_ort_quantize_applies_the_saved_ranges(tmp_path, tiny_fused, probe):
    """Quantizing with ranges from larger calibration inputs changes the model: quantize really
    uses what calibrate saved and does not recalibrate."""
    backend = get_backend("v", {"backend": "ort", "calibration": CALIBRATION}, CARD)
    backend.calibrate(tiny_fused, iter(_features(4, 200, seed=0)), tmp_path / "cal")
    backend.calibrate(tiny_fused, iter([f * 4 for f in _features(4, 200, seed=0)]), tmp_path / "cal_wide")
    backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
    backend.quantize(tiny_fused, tmp_path / "cal_wide", tmp_path / "q_wide")
    features, _ = probe
    narrow = backend.load(tmp_path / "q", 1)(features)
    wide = backend.load(tmp_path / "q_wide", 1)(features)
    assert not np.array_equal(narrow, wide)
    ranges = json.loads((tmp_path / "cal" / "ranges.json").read_text())
    assert "audio_signal" in json.dumps(ranges)


def test_ort_rejects_ranges_from_another_model(tmp_path, tiny_fused):
    backend = get_backend("v", {"backend": "ort", "calibration": CALIBRATION}, CARD)
    backend.calibrate(tiny_fused, iter(_features(4, 200, seed=0)), tmp_path / "cal")
    path = tmp_path / "cal" / "ranges.json"
    path.write_text(path.read_text().replace("/blocks.1/", "/other.1/"))
    with pytest.raises(CalibrationError, match="made for another model; run dvc repro calibrate@v"):
        backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")


@pytest.mark.parametrize("preset, activation", [("arm64", onnx.TensorProto.INT8),
                                                ("avx512_vnni", onnx.TensorProto.UINT8)])
def test_ort_preset_sets_the_activation_type_of_the_qdq_graph(tmp_path, tiny_fused, preset, activation):
    """arm64 is S8S8: every QuantizeLinear (activations; weights are stored quantized) has an int8
    zero point, where the x86 presets have uint8; weights are int8 per channel in both."""
    _, artifact = _build(tmp_path, tiny_fused, {"backend": "ort", "preset": preset, "calibration": CALIBRATION})
    model = onnx.load(str(artifact / "model.onnx"))
    initializers = {init.name: init for init in model.graph.initializer}
    quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantize) >= 30  # the input of each encoder conv, adds and the float-logits decoder
    assert {initializers[node.input[2]].data_type for node in quantize} == {activation}
    weights = [initializers[node.input[0]] for node in model.graph.node
               if node.op_type == "DequantizeLinear" and len(initializers.get(node.input[0], onnx.TensorProto()).dims) > 1
               and len(initializers[node.input[1]].dims) == 1]  # conv kernels (not int32 biases), per-channel scales
    assert weights and {weight.data_type for weight in weights} == {onnx.TensorProto.INT8}


def test_ort_defaults_peer_leaves_convs_in_float(tmp_path, tiny_fused):
    """quantize_static's defaults (S8S8 per-tensor, no pre-processing) leave Relu-followed convs as
    DQ -> FP32 Conv -> Q in ORT's optimized graph: describe() reports what really runs."""
    backend, artifact = _build(tmp_path, tiny_fused, {"backend": "ort", "preset": "ort_defaults",
                                                      "calibration": CALIBRATION})
    info = backend.describe(artifact)
    assert 0.0 < info.int8_weight_layer_fraction < 1.0
    assert backend.config.activation_type == "s8" and backend.config.per_channel is False


def test_ov_read_model_leaves_depthwise_convs_in_float(tmp_path, tiny_fused):
    """With core.read_model the depthwise weights sit behind a Reshape; NNCF leaves those convs float."""
    backend, artifact = _build(tmp_path, tiny_fused, {"backend": "ov", "loader": "read_model",
                                                      "calibration": CALIBRATION})
    precisions = backend.describe(artifact).layer_precisions
    depthwise = {name for name, module in tiny_fused.named_modules()
                 if isinstance(module, torch.nn.Conv1d) and module.groups > 1}
    assert depthwise and all(precisions[name] != "int8" for name in depthwise)
    assert all(precisions[name] == "int8" for name in set(precisions) - depthwise)


def test_pt2e_buckets_pad_and_mask_to_the_per_length_result(tmp_path, tiny_fused):
    """A length that is not a multiple of the bucket is zero-padded and masked: the valid frames
    match the graph compiled for exactly that length, and only those frames come back."""
    features = _features(1, 333, seed=3)[0][None]
    # Full ranges on every CPU: with reduce_range (auto's choice on AVX2) the two graphs' kernels
    # round differently (up to 0.004 in log-prob, measured), which flips near-tied frames of this
    # random model and hides what is tested here, the padding and masking.
    common = {"reduce_range": False, "calibration": CALIBRATION}
    bucketed, artifact = _build(tmp_path / "b", tiny_fused, {"backend": "pt2e", "bucket_frames": 128, **common})
    exact, exact_artifact = _build(tmp_path / "e", tiny_fused, {"backend": "pt2e", "shapes": "per_length", **common})
    padded_run = bucketed.load(artifact, threads=1)(features)
    exact_run = exact.load(exact_artifact, threads=1)(features)
    assert padded_run.shape == exact_run.shape == (1, 167, len(QUARTZNET_VOCABULARY) + 1)
    assert (padded_run.argmax(-1) == exact_run.argmax(-1)).mean() >= 0.99
    assert np.abs(padded_run - exact_run).max() < 0.05


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_ort_mask_padding_gives_each_row_of_a_padded_batch_its_own_output(tmp_path, tiny_fused, precision):
    """mask_padding exports the rewrite with its length input used: in a zero-padded batch the
    shorter row's valid frames are what it gives alone, where the plain graph's are not; the INT8
    coverage is the plain graph's."""
    from nemo_ptq.evaluation.throughput import pad_batch

    entry = {"backend": "ort", "precision": precision, **({"calibration": CALIBRATION} if precision == "int8" else {})}
    plain, plain_artifact = _build(tmp_path / "plain", tiny_fused, entry)
    masked, masked_artifact = _build(tmp_path / "masked", tiny_fused, {**entry, "mask_padding": True})
    long, short = _features(1, 320, seed=4)[0], _features(1, 210, seed=5)[0]
    batch, lengths = pad_batch([long, short])
    assert plain.load_batch(plain_artifact, threads=1) is None
    run, run_batch = masked.load(masked_artifact, threads=1), masked.load_batch(masked_artifact, threads=1)
    for row, features in enumerate((long, short)):
        alone = run(features[None])[0]
        assert np.abs(run_batch(batch, lengths)[row, : alone.shape[0]] - alone).max() < 1e-4
    short_alone = plain.load(plain_artifact, threads=1)(short[None])[0]
    leaked = plain.load(plain_artifact, threads=1)(batch)[1, : short_alone.shape[0]]
    assert np.abs(leaked - short_alone).max() > 1e-2  # without masking the padding reaches the short row
    assert masked.describe(masked_artifact).layer_precisions == plain.describe(plain_artifact).layer_precisions
    inputs = [i.name for i in onnx.load(str(masked_artifact / "model.onnx")).graph.input]
    assert inputs == ["audio_signal", "length"]


def test_ort_mask_padding_needs_the_quartznet_rewrite(tmp_path, citrinet):
    from nemo_ptq.errors import UnsupportedModelError

    _, wrapped, card = citrinet
    backend = get_backend("v", {"backend": "ort", "precision": "fp32", "mask_padding": True}, card)
    with pytest.raises(UnsupportedModelError, match="mask_padding: false"):
        backend.quantize(wrapped, _calibrated_nothing(backend, wrapped, tmp_path), tmp_path / "q")


def _calibrated_nothing(backend, fp32, tmp_path):
    backend.calibrate(fp32, iter([]), tmp_path / "cal")
    return tmp_path / "cal"


def test_pt2e_archive_deflates_the_graph_and_stores_each_zero_point_once(tmp_path, tiny_fused):
    """The saved program keeps its INT8 weights stored raw and 64-byte aligned, its JSON graph
    deflated, and the weights' all-zero zero points as one record; stock torch.export.load reads
    it and the module it gives matches the backend's runner."""
    backend, artifact = _build(tmp_path, tiny_fused, {"backend": "pt2e", "shapes": "per_length",
                                                      "calibration": CALIBRATION})
    with zipfile.ZipFile(artifact / "model.pt2") as archive:
        records = archive.infolist()
        json_records = [r for r in records if r.filename.endswith(".json")]
        tensor_records = [r for r in records if "/data/weights/weight_" in r.filename]
        assert json_records and all(r.compress_type == zipfile.ZIP_DEFLATED for r in json_records)
        assert all(r.compress_type == zipfile.ZIP_STORED for r in tensor_records)
        with open(artifact / "model.pt2", "rb") as raw:
            for record in tensor_records:  # data offset = local header + name + extra field
                raw.seek(record.header_offset + 26)
                name_length, extra_length = int.from_bytes(raw.read(2), "little"), int.from_bytes(raw.read(2), "little")
                assert (record.header_offset + 30 + name_length + extra_length) % 64 == 0, record.filename
        config = json.loads(archive.read(next(r for r in json_records if "weights_config" in r.filename)))["config"]
    zero_point_files = {entry["path_name"] for name, entry in config.items() if "zero_point" in name}
    int8_convs = sum(p == "int8" for p in backend.describe(artifact).layer_precisions.values())
    assert int8_convs > 1 and len(zero_point_files) == 1

    features = _features(1, 240, seed=4)[0][None]
    module = torch.export.load(artifact / "model.pt2").module()
    with torch.no_grad():
        direct = module(torch.from_numpy(features)).numpy()
    # compiled oneDNN INT8 kernels round differently from the decomposed (dequantize + FP32) ops
    np.testing.assert_allclose(backend.load(artifact, threads=1)(features), direct, atol=0.02)


def test_pt2e_needs_a_compiler(tmp_path, tiny_fused, monkeypatch):
    backend = get_backend("v", {"backend": "pt2e"}, CARD)
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(BackendUnavailableError, match="apt-get install gcc"):
        backend.load(tmp_path, threads=1)


@pytest.mark.parametrize("entry, message", [
    ({"backend": "ort", "precision": "int4"}, "choose one of: int8, dynamic, fp32"),
    ({"backend": "ort", "preset": "avx9"}, "choose one of: auto, avx512_vnni, avx2, arm64, ort_defaults"),
    ({"backend": "ort", "activation_type": "u16"}, "choose one of: u8, s8"),
    ({"backend": "ort", "calibration": {"method": "mse"}}, "choose one of: minmax, entropy, percentile"),
    ({"backend": "ort", "calibration": {"percentile": 10}}, r"percentile must be in \(50, 100\]"),
    ({"backend": "ort", "per_chanel": True}, "valid keys: float_layers, equalize, precision, preset"),
    ({"backend": "ov", "inference_precision": "fp16"}, "choose one of: f32, bf16, plugin_default"),
    ({"backend": "ov", "loader": "load"}, "choose one of: convert_model, read_model"),
    ({"backend": "pt2e", "conv2d_form": "yes"}, "conv2d_form must be true or false"),
    ({"backend": "pt2e", "shapes": "static"}, "choose one of: buckets, per_length, dynamic"),
    ({"backend": "pt2e", "bucket_frames": 0}, "bucket_frames must be a positive number"),
    ({"backend": "pt2e", "conv2d_form": False}, "shapes: buckets needs conv2d_form: true"),
])
def test_config_errors_name_the_valid_choices(entry, message):
    with pytest.raises(ConfigError, match=message):
        get_backend("v", entry, CARD)


@pytest.mark.parametrize("profile, preset, reduce_range", [
    ("amx", "avx512_vnni", False), ("avx512_bf16", "avx512_vnni", False), ("vnni", "avx512_vnni", False),
    ("arm_dotprod", "arm64", False), ("avx2", "avx2", True), ("generic", "avx2", True),
])
def test_ort_auto_preset_fits_the_cpu_and_is_recorded(monkeypatch, profile, preset, reduce_range):
    """Full 8-bit ranges only where u8*s8 products cannot saturate, S8 activations on ARM64 with a
    dot product; variant.json names the preset taken."""
    from nemo_ptq import cpu

    monkeypatch.setattr(cpu, "detect", lambda: cpu.Cpu(model="Test CPU", profile=profile, isa=[]))
    backend = get_backend("v", {"backend": "ort"}, CARD)
    assert (backend.config.preset, backend.config.reduce_range) == (preset, reduce_range)
    assert backend.config_payload()["preset"] == preset
    explicit = get_backend("v", {"backend": "ort", "preset": "avx512_vnni", "reduce_range": True}, CARD)
    assert (explicit.config.preset, explicit.config.reduce_range) == ("avx512_vnni", True)  # fields override


@pytest.mark.parametrize("entry, profile, skipped", [
    ({"precision": "fp32", "inference_precision": "bf16"}, "avx2", True),
    ({"precision": "fp32", "inference_precision": "bf16"}, "vnni", True),
    ({"precision": "fp32", "inference_precision": "bf16"}, "avx512_bf16", False),
    ({"precision": "fp32", "inference_precision": "bf16"}, "amx", False),
    ({"precision": "fp32", "inference_precision": "plugin_default"}, "avx2", False),  # the plugin picks f32 there
    ({"precision": "int8", "inference_precision": "f32"}, "avx2", False),
])
def test_ov_bf16_is_skipped_where_the_cpu_emulates_bf16(entry, profile, skipped):
    from nemo_ptq import cpu

    reason = get_backend("v", {"backend": "ov", **entry}, CARD).skip_reason(
        cpu.Cpu(model="Test CPU", profile=profile, isa=[]))
    assert bool(reason) == skipped
    if skipped:
        assert f"on this CPU ({profile}) the plugin emulates bf16 or runs f32" in reason and "\n" not in reason



@pytest.mark.parametrize("profile, reduce_range", [("avx512_bf16", False), ("vnni", False), ("avx2", True)])
def test_pt2e_reduce_range_auto_fits_the_cpu(monkeypatch, profile, reduce_range):
    from nemo_ptq import cpu

    monkeypatch.setattr(cpu, "detect", lambda: cpu.Cpu(model="Test CPU", profile=profile, isa=[]))
    assert get_backend("v", {"backend": "pt2e"}, CARD).config.reduce_range is reduce_range
    assert get_backend("v", {"backend": "pt2e", "reduce_range": False}, CARD).config.reduce_range is False
    with pytest.raises(ConfigError, match="reduce_range must be true, false or auto"):
        get_backend("v", {"backend": "pt2e", "reduce_range": 1}, CARD)
