"""Backends leave process-wide settings as they found them (the rule in backends/base.py)."""

import shutil

import numpy as np
import pytest
import torch

from nemo_ptq.backends import get_backend
from nemo_ptq.backends.base import torch_threads
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY

CARD = {
    "vocabulary": list(QUARTZNET_VOCABULARY), "blank_id": len(QUARTZNET_VOCABULARY), "tokenizer": "char",
    "sample_rate": 16000, "feature_dim": 64, "subsampling_factor": 2,
}
CALIBRATION = {"num_utterances": 2, "seed": 0}
CHEAP = {
    "eager": {"backend": "eager", "engine": "onednn", "calibration": CALIBRATION},
    "ort": {"backend": "ort", "calibration": CALIBRATION},
    "ov": {"backend": "ov", "calibration": CALIBRATION},
}


def settings() -> dict:
    import torch._inductor.config as inductor_config

    return {
        "threads": torch.get_num_threads(),
        "quantized_engine": torch.backends.quantized.engine,
        "inductor_freezing": inductor_config.freezing,
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "accumulated_recompile_limit": torch._dynamo.config.accumulated_recompile_limit,
    }


@pytest.fixture
def caller_settings():
    """One thread and the x86 engine in the caller, so a backend asking for 2 threads and onednn
    would show up as a change."""
    before_test = (torch.get_num_threads(), torch.backends.quantized.engine)
    torch.set_num_threads(1)
    torch.backends.quantized.engine = "x86"
    yield settings()
    torch.set_num_threads(before_test[0])
    torch.backends.quantized.engine = before_test[1]


def _features(count, frames, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((64, frames)).astype(np.float32) for _ in range(count)]


def _round_trip(backend, fused, tmp_path):
    backend.calibrate(fused, iter(_features(2, 160, seed=0)), tmp_path / "cal")
    backend.quantize(fused, tmp_path / "cal", tmp_path / "q")
    run = backend.load(tmp_path / "q", threads=2)
    return run, run(_features(1, 200, seed=1)[0][None])


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_calibrate_quantize_load_run_leave_settings_unchanged(tmp_path, tiny_fused, caller_settings, name):
    _, log_probs = _round_trip(get_backend(name, CHEAP[name], CARD), tiny_fused, tmp_path)
    assert log_probs.shape == (1, 100, len(QUARTZNET_VOCABULARY) + 1)
    assert settings() == caller_settings


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="pt2e compiles with gcc")
def test_pt2e_compiles_with_its_settings_and_restores_the_callers(tmp_path, tiny_fused, caller_settings):
    backend = get_backend("pt2e", {"backend": "pt2e", "shapes": "per_length", "calibration": CALIBRATION}, CARD)
    run, _ = _round_trip(backend, tiny_fused, tmp_path)
    run(_features(1, 230, seed=2)[0][None])  # a new length: compiles again inside the runner
    assert settings() == caller_settings


def test_eager_runner_uses_its_engine_and_threads_inside_the_call(tmp_path, tiny_fused, caller_settings,
                                                                  monkeypatch):
    backend = get_backend("eager", CHEAP["eager"], CARD)
    run, _ = _round_trip(backend, tiny_fused, tmp_path)
    seen = {}
    original = torch.Tensor.numpy

    def numpy(tensor, *args, **kwargs):  # called once per run, inside the runner's settings
        seen.update(threads=torch.get_num_threads(), engine=torch.backends.quantized.engine)
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", numpy)
    run(_features(1, 200, seed=3)[0][None])
    monkeypatch.undo()
    assert seen == {"threads": 2, "engine": "onednn"}
    assert settings() == caller_settings


def test_torch_threads_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
