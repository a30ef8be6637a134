"""The contract every backend keeps, checked for every variant that params.yaml ships.

calibrate -> quantize -> describe -> load -> run on the tiny QuartzNet rewrite: files land where
the stages expect them, the output is a log-probability
matrix of the right shape that agrees with the FP32 model on most frames.
"""

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO_ROOT
from nemo_ptq.backends import get_backend
from nemo_ptq.backends.base import CONFIG_FILE
from nemo_ptq.backends.calibration import select_utterances
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY

VARIANTS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["variants"]
CARD = {
    "vocabulary": list(QUARTZNET_VOCABULARY), "blank_id": len(QUARTZNET_VOCABULARY), "tokenizer": "char",
    "sample_rate": 16000, "feature_dim": 64, "subsampling_factor": 2,
}


def _features(count, frames, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((64, frames)).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_backend_contract(tmp_path, tiny_fused, variant):
    backend = get_backend(variant, VARIANTS[variant], CARD)
    calibration = getattr(backend.config, "calibration", None)
    pool = _features(8, 160, seed=0)
    chosen = select_utterances(pool, min(calibration.num_utterances, 8), calibration.seed) if calibration else []

    backend.calibrate(tiny_fused, iter(chosen), tmp_path / "cal")
    backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
    saved = json.loads((tmp_path / "q" / CONFIG_FILE).read_text())
    assert saved["backend"] == VARIANTS[variant]["backend"]

    info = backend.describe(tmp_path / "q")
    assert 0 < info.size_bytes
    assert 0.0 <= info.int8_conv_fraction <= 1.0 and 0.0 <= info.int8_mac_fraction <= 1.0
    assert info.layer_precisions

    run = backend.load(tmp_path / "q", threads=1)
    features = _features(1, 300, seed=1)[0]
    log_probs = run(features[None])
    with torch.inference_mode():
        reference = tiny_fused(torch.from_numpy(features)[None]).numpy()
    assert log_probs.shape == reference.shape
    assert np.allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-2)
    agreement = (log_probs.argmax(-1) == reference.argmax(-1)).mean()
    assert agreement >= 0.8, f"{variant}: argmax agrees with FP32 on only {agreement:.0%} of frames"


def test_backends_are_found_by_module_name():
    from nemo_ptq.backends import available

    assert {"eager", "ort", "ov", "pt2e"} <= set(available())
    assert not {"base", "calibration"} & set(available())
