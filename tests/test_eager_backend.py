"""PyTorch eager static quantization: every encoder conv runs in INT8, the CTC logits in float,
configs validate."""

import numpy as np
import pytest
import torch

from nemo_ptq.backends import get_backend
from nemo_ptq.backends.eager import ENGINES
from nemo_ptq.errors import ConfigError


def _entry(engine, **calibration):
    cal = {"num_utterances": 2, "seed": 0, "observer": "minmax", "per_channel": True, "reduce_range": False}
    cal.update(calibration)
    return {"backend": "eager", "engine": engine, "calibration": cal}


def _features(n=3, frames=120):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((64, frames)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("per_channel", [True, False])
def test_every_encoder_conv_is_int8_after_convert(tmp_path, tiny_fused, engine, per_channel):
    backend = get_backend("v", _entry(engine, per_channel=per_channel))
    backend.calibrate(tiny_fused, _features(), tmp_path / "cal")
    backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
    info = backend.describe(tmp_path / "q")
    encoder_convs = sum(1 for n, _ in tiny_fused.named_modules() if n.endswith("conv"))
    assert len(info.layer_precisions) == encoder_convs + 1
    assert {n for n, p in info.layer_precisions.items() if p != "int8"} == {"decoder"}
    assert info.int8_weight_layer_fraction == encoder_convs / (encoder_convs + 1)
    assert 0.95 < info.int8_weight_mac_fraction < 1.0
    observers = torch.load(tmp_path / "cal" / "observers.pt", weights_only=True)
    minima = {k: v for k, v in observers.items() if k.endswith("min_val")}
    assert minima and all(observers[k.replace("min_val", "max_val")] >= v for k, v in minima.items())
    assert not any(k.endswith("weight") for k in observers), "the weights come from the FP32 model"

    run = backend.load(tmp_path / "q", threads=1)
    log_probs = run(_features(1, 200)[0][None])
    assert log_probs.shape == (1, 100, 29)
    assert np.allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-3)
    # float logits: far more distinct gaps to the best class than 8-bit logits could give (2 x 256)
    assert len(np.unique(np.round(log_probs - log_probs.max(-1, keepdims=True), 5))) > 1000


@pytest.mark.parametrize(
    "entry, message",
    [
        (_entry("fbgem"), "unknown engine 'fbgem'; choose one of: onednn, x86, fbgemm, qnnpack"),
        (_entry("onednn", observer="kl"), "unknown observer 'kl'; choose one of: minmax"),
        (_entry("qnnpack", reduce_range=True), "qnnpack uses full-range activations"),
        (_entry("onednn", reduce_range="yes"), "reduce_range must be true, false or auto, got 'yes'"),
        ({**_entry("onednn"), "bits": 4}, "unknown key\\(s\\) bits; valid keys: float_layers, equalize, engine, calibration"),
        ({"backend": "tensorrt"}, "unknown backend 'tensorrt'; choose one of: eager"),
        ({"engine": "onednn"}, "needs a 'backend' key"),
    ],
)
def test_invalid_configs_name_the_valid_choices(entry, message):
    with pytest.raises(ConfigError, match=message):
        get_backend("v", entry)


@pytest.mark.parametrize("profile, int8_dot", [("avx512_bf16", True), ("vnni", True), ("arm_dotprod", True),
                                              ("avx2", False), ("generic", False)])
@pytest.mark.parametrize("engine", ENGINES)
def test_reduce_range_auto_takes_7_bits_where_products_saturate(monkeypatch, profile, int8_dot, engine):
    """The x86 engines' u8*s8 kernels saturate without an int8 dot product; qnnpack's never do."""
    from nemo_ptq import cpu

    monkeypatch.setattr(cpu, "detect", lambda: cpu.Cpu(model="Test CPU", profile=profile, isa=[]))
    backend = get_backend("v", _entry(engine, reduce_range="auto"))
    expected = False if engine == "qnnpack" else not int8_dot
    assert backend.config.calibration.reduce_range is expected
    assert backend.config_payload()["calibration"]["reduce_range"] is expected  # variant.json: the value taken
    default = {"backend": "eager", "engine": engine}
    assert get_backend("v", default).config.calibration.reduce_range is expected


def test_int8_artifact_is_at_most_027_of_the_nemo_checkpoint(tmp_path):
    from nemo_ptq.models.architectures import build_quartznet
    from nemo_ptq.models.fused import rewrite

    model = build_quartznet("quartznet_15x5")
    model.save_to(str(tmp_path / "fp32.nemo"))
    fused = rewrite(model)
    backend = get_backend("v", _entry("onednn"))
    backend.calibrate(fused, _features(1, 100), tmp_path / "cal")
    backend.quantize(fused, tmp_path / "cal", tmp_path / "q")
    assert backend.describe(tmp_path / "q").size_bytes <= 0.27 * (tmp_path / "fp32.nemo").stat().st_size


def test_artifact_stores_int8_weights_without_zero_points_and_loads_them_exactly(tmp_path, tiny_fused):
    from nemo_ptq.backends.eager import _convert, _engine

    backend = get_backend("v", _entry("onednn"))
    backend.calibrate(tiny_fused, _features(), tmp_path / "cal")
    backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
    saved = torch.load(tmp_path / "q" / "model.int8.pt", weights_only=True)
    weights = saved["symmetric_per_channel_weights"]
    assert weights and all(w["int8"].dtype == torch.int8 for w in weights.values())
    assert not any(isinstance(v, torch.Tensor) and v.is_quantized for v in saved["state"].values())

    prepared = backend._prepared(tiny_fused)
    prepared.load_state_dict(torch.load(tmp_path / "cal" / "observers.pt", weights_only=True), strict=False)
    features = _features(1, 150)[0][None]
    with _engine("onednn"), torch.inference_mode():  # the engine the runner uses: kernels differ by engine
        expected = _convert(prepared)(torch.from_numpy(features)).numpy()
    assert np.array_equal(backend.load(tmp_path / "q", threads=1)(features), expected)
