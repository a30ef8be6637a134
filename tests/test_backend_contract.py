"""The contract every registered backend keeps, as one test template (NNCF's way): each backend
subclasses `BackendTemplate` with what it should do, and a test fails when a registered backend
has no subclass. Every template runs on two FP32 models: the QuartzNet rewrite (`FusedCTC`,
quartznet_tiny) and a Citrinet-style NeMo module (`NemoCTC`: squeeze-excite, strided residuals,
BPE vocabulary), both with random weights.

The positive case runs calibrate -> quantize -> describe -> load -> run and checks the on-disk
layout, the coverage figures over the model's own layer table, and the output against FP32; a
second one keeps layers in float (`float_layers`) from the calibration that also serves the
all-INT8 artifact. The negative cases: no calibration, another backend's or another config's
calibration, another model's calibration, no calibration utterances, unknown float layers, and
bad options.
"""

from __future__ import annotations

import re

import json
import shutil
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO_ROOT
from nemo_ptq.backends import available, get_backend
from nemo_ptq.backends.base import CONFIG_FILE, Backend, register, registry
from nemo_ptq.backends.calibration import CalibrationSample, select_utterances
from nemo_ptq.errors import CalibrationError, ConfigError, UnsupportedModelError
from nemo_ptq.evaluation.throughput import pad_batch
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY
from nemo_ptq.models.layers import weight_layers

MODELS = ("quartznet", "citrinet")
QUARTZNET_CARD = {
    "vocabulary": list(QUARTZNET_VOCABULARY), "blank_id": len(QUARTZNET_VOCABULARY), "tokenizer": "char",
    "sample_rate": 16000, "feature_dim": 64, "subsampling_factor": 2,
}
CALIBRATION = {"num_utterances": 3, "seed": 0}


@pytest.fixture(scope="module")
def fp32_models(tiny_fused, citrinet):
    """name -> (FP32 module as the fuse stage hands it on, model card)."""
    _, wrapped, card = citrinet
    return {"quartznet": (tiny_fused, QUARTZNET_CARD), "citrinet": (wrapped, card)}


@pytest.fixture(scope="module")
def smaller_quartznet(tiny_fused):
    """The QuartzNet rewrite without its last block: another model with the same feature size."""
    from nemo_ptq.models.fused import FusedCTC, FusedSpec

    spec = tiny_fused.spec
    blocks = spec.blocks[:-1]
    decoder = replace(spec.decoder, in_channels=blocks[-1].body[-1].out_channels)
    return FusedCTC(FusedSpec(blocks=blocks, decoder=decoder)).eval(), QUARTZNET_CARD


def _features(feature_dim: int, count: int, frames: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((feature_dim, frames)).astype(np.float32) for _ in range(count)]


def agreement_with_fp32(backend: Backend, artifact_dir, fp32, feature_dim: int = 64) -> tuple[float, np.ndarray]:
    """(share of frames whose argmax equals the FP32 model's, the artifact's log-probs) on one
    seeded random utterance of 320 frames."""
    features = _features(feature_dim, 1, 320, seed=1)[0][None]
    log_probs = backend.load(artifact_dir, threads=1)(features)
    with torch.inference_mode():
        reference = fp32(torch.from_numpy(features)).numpy()
    return float((log_probs.argmax(-1) == reference.argmax(-1)).mean()), log_probs


def pytest_generate_tests(metafunc):
    """`model` runs over MODELS; a template's slow models are marked slow."""
    if "model" in metafunc.fixturenames and metafunc.cls is not None:
        slow = metafunc.cls.slow_models
        metafunc.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m in slow else m for m in MODELS])


class BackendTemplate:
    """What every backend must do; subclasses say which backend and what to expect of it."""

    backend: ClassVar[str]
    # model -> options that make an INT8 artifact of it; a model left out is one the backend
    # must refuse with UnsupportedModelError
    options: ClassVar[dict[str, dict]]
    float_layers: ClassVar[dict[str, set[str]]]  # model -> FP32 module paths that stay float
    float_pattern: ClassVar[re.Pattern] = re.compile(r"(?!)")  # and module paths matching this (none)
    foreign_model: ClassVar[str] = "citrinet"  # a model whose calibration this backend can tell apart
    bad_option: ClassVar[tuple[dict, str]]  # an invalid option and the message it must give
    slow_models: ClassVar[tuple[str, ...]] = ()
    # padded batch row vs the row alone; activation ranges computed per call (dynamic) see the batch
    batch_tolerance: ClassVar[float] = 1e-3

    def make(self, model: str, card: dict, **extra) -> Backend:
        entry = {"backend": self.backend, "calibration": CALIBRATION, **self.options.get(model, {}), **extra}
        return get_backend("v", entry, card)

    def calibrated(self, tmp_path, fp32, card, model="quartznet", name="cal", **extra):
        backend = self.make(model, card, **extra)
        pool = _features(card["feature_dim"], 6, 160, seed=0)
        backend.calibrate(fp32, iter(select_utterances(pool, backend.calibration_sample())), tmp_path / name)
        return backend, tmp_path / name

    def test_calibrate_quantize_describe_run(self, tmp_path, fp32_models, model):
        fp32, card = fp32_models[model]
        if model not in self.options:
            with pytest.raises(UnsupportedModelError):
                self.calibrated(tmp_path, fp32, card, model)
            return
        backend, cal = self.calibrated(tmp_path, fp32, card, model)
        assert {path.name for path in cal.iterdir()} == {CONFIG_FILE, backend.calibration_file}
        backend.quantize(fp32, cal, tmp_path / "q")
        assert json.loads((tmp_path / "q" / CONFIG_FILE).read_text()) == backend.config_payload()

        info = backend.describe(tmp_path / "q")
        table = weight_layers(fp32, card["feature_dim"])
        assert [layer["name"] for layer in info.layers] == list(table)  # the FP32 model's layers, each once
        assert all(layer["runtime_names"] for layer in info.layers), "every layer maps to a backend layer"
        float_layers = self.float_layers[model] | {path for path in table if self.float_pattern.search(path)}
        assert {name for name, p in info.layer_precisions.items() if p != "int8"} == float_layers
        int8_macs = sum(table[name].macs for name, p in info.layer_precisions.items() if p == "int8")
        assert info.int8_weight_mac_fraction == pytest.approx(int8_macs / sum(t.macs for t in table.values()))
        assert info.int8_weight_layer_fraction == pytest.approx(1 - len(float_layers) / len(table))
        assert 0 < info.size_bytes

        features = _features(card["feature_dim"], 1, 320, seed=1)[0][None]
        log_probs = backend.load(tmp_path / "q", threads=1)(features)
        with torch.inference_mode():
            reference = fp32(torch.from_numpy(features)).numpy()
        assert log_probs.shape == reference.shape
        assert np.allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-2)
        agreement = (log_probs.argmax(-1) == reference.argmax(-1)).mean()
        assert agreement >= 0.8, f"argmax agrees with FP32 on only {agreement:.0%} of frames"
        # float logits: far more distinct gaps to the best class than 8-bit logits give (2 x 256)
        assert len(np.unique(np.round(log_probs - log_probs.max(-1, keepdims=True), 5))) > 1000
        self.check_padded_batch(backend, tmp_path / "q", card)

    def float_choice(self, int8_layers: list[str]) -> list[str]:
        """Layers to keep in float: the first INT8 one and one in the middle."""
        return [int8_layers[0], int8_layers[len(int8_layers) // 2]]

    def test_float_layers_share_one_calibration(self, tmp_path, fp32_models, model):
        """Layers kept in float at quantize time, from a calibration that ignores them: the same
        folder then serves the all-INT8 artifact."""
        fp32, card = fp32_models[model]
        if model not in self.options:
            pytest.skip(f"the {self.backend} backend refuses {model} (test_calibrate_quantize_describe_run)")
        table = weight_layers(fp32, card["feature_dim"])
        float_before = self.float_layers[model] | {path for path in table if self.float_pattern.search(path)}
        chosen = self.float_choice([path for path in table if path not in float_before])
        backend, cal = self.calibrated(tmp_path, fp32, card, model, float_layers=chosen)
        assert "float_layers" not in json.loads((cal / CONFIG_FILE).read_text())

        mac_fraction = {}
        for out, quantizer, float_expected in (("q_float", backend, float_before | set(chosen)),
                                               ("q_int8", self.make(model, card), float_before)):
            quantizer.quantize(fp32, cal, tmp_path / out)
            saved = json.loads((tmp_path / out / CONFIG_FILE).read_text())
            assert saved["float_layers"] == quantizer.config.float_layers
            info = quantizer.describe(tmp_path / out)
            assert {name for name, p in info.layer_precisions.items() if p != "int8"} == float_expected
            mac_fraction[out] = info.int8_weight_mac_fraction
        chosen_share = sum(table[path].macs for path in chosen) / sum(layer.macs for layer in table.values())
        assert mac_fraction["q_float"] == pytest.approx(mac_fraction["q_int8"] - chosen_share)

        assert agreement_with_fp32(backend, tmp_path / "q_float", fp32, card["feature_dim"])[0] >= 0.8

    def test_unknown_float_layer_is_a_config_error(self, tmp_path, tiny_fused):
        backend = self.make("quartznet", QUARTZNET_CARD, float_layers=["blocks.0.nope"])
        message = (r"variants\.v\.float_layers: 'blocks\.0\.nope' is not a weight layer of this model; "
                   r"name FP32 module paths from its layer table \(blocks\.0\.body\.0\.conv, ")
        with pytest.raises(ConfigError, match=message):
            backend.calibrate(tiny_fused, iter(_features(64, 3, 160, seed=0)), tmp_path / "cal")
        assert not (tmp_path / "cal").exists()
        (tmp_path / "cal").mkdir()
        self.make("quartznet", QUARTZNET_CARD).save_config(tmp_path / "cal")  # a calibration without them
        (tmp_path / "cal" / backend.calibration_file).write_bytes(b"")
        with pytest.raises(ConfigError, match=message):
            backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
        assert not (tmp_path / "q").exists()

    def check_padded_batch(self, backend: Backend, artifact_dir, card: dict) -> None:
        """A length-sorted, zero-padded batch of two: the longest row is what it gives alone; with
        `load_batch` (padding masked) the shorter row's valid frames are too."""
        long, short = (_features(card["feature_dim"], 1, frames, seed=frames)[0] for frames in (320, 210))
        x, lengths = pad_batch([long, short])
        run = backend.load(artifact_dir, threads=1)
        alone = [run(f[None])[0] for f in (long, short)]
        run_batch = backend.load_batch(artifact_dir, threads=1)
        batched = run(x) if run_batch is None else run_batch(x, lengths)
        assert batched.shape[0] == 2 and batched.shape[1] >= alone[0].shape[0]
        rows = [0] if run_batch is None else [0, 1]
        for row in rows:
            valid = batched[row, : alone[row].shape[0]]
            assert np.abs(valid - alone[row]).max() < self.batch_tolerance, f"row {row} differs from running alone"

    def test_quantize_without_calibration_names_the_stage_to_run(self, tmp_path, tiny_fused):
        backend = self.make("quartznet", QUARTZNET_CARD)
        with pytest.raises(CalibrationError, match="run dvc repro calibrate@v"):
            backend.quantize(tiny_fused, tmp_path / "missing", tmp_path / "q")
        backend.save_config(tmp_path)  # variant.json but no payload
        with pytest.raises(CalibrationError, match=f"{backend.calibration_file} is missing"):
            backend.quantize(tiny_fused, tmp_path, tmp_path / "q")

    def test_calibration_of_another_backend_or_config_is_refused(self, tmp_path, tiny_fused):
        other = "ort" if self.backend == "ov" else "ov"  # ov's calibration only saves features: cheap
        get_backend("v", {"backend": other, "calibration": CALIBRATION}, QUARTZNET_CARD).calibrate(
            tiny_fused, iter(_features(64, 3, 160, seed=0)), tmp_path / "foreign")
        backend = self.make("quartznet", QUARTZNET_CARD)
        with pytest.raises(CalibrationError, match=f"calibrated by the '{other}' backend, not '{self.backend}'"):
            backend.quantize(tiny_fused, tmp_path / "foreign", tmp_path / "q")

        (tmp_path / "other_config").mkdir()
        backend.save_config(tmp_path / "other_config")  # same backend, another seed
        (tmp_path / "other_config" / backend.calibration_file).write_bytes(b"")
        other_config = self.make("quartznet", QUARTZNET_CARD, calibration={**CALIBRATION, "seed": 1})
        with pytest.raises(CalibrationError, match="another .* config \\(differs in: calibration\\)"):
            other_config.quantize(tiny_fused, tmp_path / "other_config", tmp_path / "q")

    def test_calibration_of_another_model_is_refused(self, tmp_path, request, tiny_fused):
        foreign, card = (request.getfixturevalue("citrinet")[1:] if self.foreign_model == "citrinet"
                         else request.getfixturevalue(self.foreign_model))
        options = self.options.get("citrinet", {}) if self.foreign_model == "citrinet" else {}
        _, cal = self.calibrated(tmp_path, foreign, card, **options)
        backend = self.make("quartznet", QUARTZNET_CARD, **options)
        with pytest.raises(CalibrationError, match="made for another model"):
            backend.quantize(tiny_fused, cal, tmp_path / "q")
        assert not (tmp_path / "q" / CONFIG_FILE).exists()

    def test_calibration_needs_utterances(self, tmp_path, tiny_fused):
        backend = self.make("quartznet", QUARTZNET_CARD)
        with pytest.raises(ConfigError, match="got no utterances"):
            backend.calibrate(tiny_fused, iter([]), tmp_path / "cal")

    def test_bad_options_are_config_errors(self):
        with pytest.raises(ConfigError, match="unknown key\\(s\\) colour; valid keys: "):
            get_backend("v", {"backend": self.backend, "colour": "blue"}, QUARTZNET_CARD)
        entry, message = self.bad_option
        with pytest.raises(ConfigError, match=message):
            get_backend("v", {"backend": self.backend, **entry}, QUARTZNET_CARD)


CITRINET_DECODER = "decoder.decoder_layers.0"


class TestEager(BackendTemplate):
    backend = "eager"
    options = {"quartznet": {"engine": "onednn"}}  # the rewrite only: Citrinet is refused
    float_layers = {"quartznet": {"decoder"}}  # float CTC logits
    foreign_model = "smaller_quartznet"
    bad_option = ({"engine": "fbgem"}, "unknown engine 'fbgem'; choose one of: onednn")

    def make(self, model, card, **extra):
        return super().make(model, card, **{"engine": "onednn", **extra})


class TestOrt(BackendTemplate):
    backend = "ort"
    options = {"quartznet": {}, "citrinet": {}}
    float_layers = {"quartznet": {"decoder"}, "citrinet": {CITRINET_DECODER}}  # float_logits
    bad_option = ({"preset": "avx9"}, "choose one of: auto, avx512_vnni, avx2, arm64, ort_defaults")

    def float_choice(self, int8_layers):
        return int8_layers[:1]  # it reads the float features; ORT requantizes layers between 8-bit tensors

    def test_a_float_layer_between_8_bit_tensors_is_refused(self, tmp_path, tiny_fused):
        middle = list(weight_layers(tiny_fused, 64))[3]
        backend, cal = self.calibrated(tmp_path, tiny_fused, QUARTZNET_CARD, float_layers=[middle])
        with pytest.raises(ConfigError, match=f"float_layers: onnxruntime runs '{middle}' in INT8 anyway"):
            backend.quantize(tiny_fused, cal, tmp_path / "q")
        assert not (tmp_path / "q" / CONFIG_FILE).exists()

    def test_dynamic_precision_keeps_float_layers_too(self, tmp_path, tiny_fused):
        chosen = list(weight_layers(tiny_fused, 64))[:2]
        backend = self.make("quartznet", QUARTZNET_CARD, precision="dynamic", float_layers=chosen)
        backend.calibrate(tiny_fused, iter([]), tmp_path / "cal")
        backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
        precisions = backend.describe(tmp_path / "q").layer_precisions
        assert {name for name, p in precisions.items() if p != "int8"} == {"decoder", *chosen}


class TestOv(BackendTemplate):
    backend = "ov"
    options = {"quartznet": {}, "citrinet": {}}
    float_layers = {"quartznet": set(), "citrinet": set()}  # OpenVINO's INT8 conv writes float logits
    bad_option = ({"loader": "load"}, "choose one of: convert_model, read_model")


class TestPt2e(BackendTemplate):
    """Each positive case compiles with Inductor (tens of seconds); Citrinet's recompiles per length."""

    backend = "pt2e"
    options = {"quartznet": {}, "citrinet": {"shapes": "per_length"}}  # buckets need the rewrite
    float_layers = {"quartznet": set(), "citrinet": set()}
    # X86InductorQuantizer leaves Citrinet's squeeze-excitation Linear layers (after a mean) in float.
    float_pattern = re.compile(r"\.mconv\.\d+\.fc\.\d+$")
    foreign_model = "smaller_quartznet"  # Citrinet would need another config (per_length)
    bad_option = ({"shapes": "static"}, "choose one of: buckets, per_length, dynamic")
    slow_models = ("citrinet",)


TEMPLATES = (TestEager, TestOrt, TestOv, TestPt2e)


def test_every_registered_backend_has_a_template():
    for name in available():
        get_backend("v", {"backend": name, "calibration": CALIBRATION, **({"engine": "onednn"} if name == "eager" else {})})
    assert {template.backend for template in TEMPLATES} == set(available()) == set(registry())


def test_every_params_variant_is_valid_and_templated():
    variants = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["variants"]
    backends = {get_backend(name, entry).name for name, entry in variants.items()}
    assert backends <= {template.backend for template in TEMPLATES}


def test_a_config_without_calibration_must_say_so():
    @dataclass(frozen=True)
    class NoCalibration:
        level: int = 1

    class Silent(Backend):
        name, config_class, calibration_file = "silent", NoCalibration, "x"
        observe = convert = load = describe = None

    with pytest.raises(TypeError, match="calibration field or override calibration_sample"):
        register(Silent)
    assert "silent" not in registry()


def test_a_config_must_take_float_layers():
    @dataclass(frozen=True)
    class NoFloatLayers:
        calibration: CalibrationSample = CalibrationSample()

    class Rigid(Backend):
        name, config_class, calibration_file = "rigid", NoFloatLayers, "x"
        observe = convert = load = describe = None

    with pytest.raises(TypeError, match="derive NoFloatLayers from BackendConfig"):
        register(Rigid)
    assert "rigid" not in registry()


@pytest.mark.parametrize("entry, message", [
    ({"backend": "ort", "precision": "fp32"}, "float_layers has nothing to keep in float: precision fp32"),
    ({"backend": "ov", "precision": "fp32"}, "float_layers has nothing to keep in float: precision fp32"),
    ({"backend": "ort", "float_layers": "decoder"}, "float_layers must be a list of FP32 module paths"),
    ({"backend": "pt2e", "float_layers": ["decoder", "decoder"]}, "float_layers names a layer twice"),
])
def test_float_layers_are_validated(entry, message):
    with pytest.raises(ConfigError, match=f"variants.v: {message}"):
        get_backend("v", {"float_layers": ["decoder"], **entry}, QUARTZNET_CARD)


def test_fp32_variants_need_no_calibration(tmp_path, tiny_fused):
    """A variant calibrated on nothing writes only variant.json and quantizes from it."""
    for entry in ({"backend": "ort", "precision": "fp32"}, {"backend": "ov", "precision": "fp32"}):
        backend = get_backend("v", entry, QUARTZNET_CARD)
        assert backend.calibration_sample() is None and select_utterances([1, 2], None) == []
        cal = tmp_path / entry["backend"]
        backend.calibrate(tiny_fused, iter([]), cal)
        assert [path.name for path in cal.iterdir()] == [CONFIG_FILE]
        assert backend.calibration_payload(cal) is None
        shutil.rmtree(cal)
