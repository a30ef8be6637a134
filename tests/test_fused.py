"""The QuartzNet/Jasper rewrite reproduces NeMo's forward exactly and is quantizable."""

import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from nemo_ptq.errors import UnsupportedModelError
from nemo_ptq.models.architectures import build_quartznet, quartznet_config
from nemo_ptq.models.fused import FusedCTC, conv_layers, nemo_log_probs, rewrite


@pytest.mark.parametrize("architecture", ["quartznet_5x5", "quartznet_15x5"])
def test_rewrite_matches_nemo(architecture):
    model = randomize_batchnorm(build_quartznet(architecture))
    fused = rewrite(model)
    features = torch.randn(1, 64, 357, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = nemo_log_probs(model, features)
        actual = fused(features)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-4


def test_rewrite_has_no_batchnorm_and_one_unit_per_conv(tiny_model, tiny_fused):
    assert not any(isinstance(m, nn.BatchNorm1d) for m in tiny_fused.modules())
    nemo_convs = [m for m in tiny_model.modules() if isinstance(m, nn.Conv1d)]
    assert len(conv_layers(tiny_fused)) == len(nemo_convs)


def test_save_and_load_round_trip(tmp_path, tiny_fused):
    tiny_fused.save(tmp_path)
    loaded = FusedCTC.load(tmp_path)
    features = torch.randn(1, 64, 100)
    with torch.inference_mode():
        assert torch.equal(loaded(features), tiny_fused(features))


def test_unsupported_activation_is_a_clear_error():
    from nemo.collections.asr.models import EncDecCTCModel

    cfg = quartznet_config("quartznet_tiny")
    cfg.encoder.activation = "hardtanh"
    with pytest.raises(UnsupportedModelError, match="only ReLU"):
        rewrite(EncDecCTCModel(cfg=cfg))
