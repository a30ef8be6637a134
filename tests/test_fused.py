"""The QuartzNet/Jasper rewrite reproduces NeMo's forward exactly and is quantizable."""

import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from nemo_ptq.errors import UnsupportedModelError
from nemo_ptq.models.architectures import build_quartznet, quartznet_config
from nemo_ptq.models.fp32 import nemo_log_probs
from nemo_ptq.models.fused import FusedCTC, conv_layers, rewrite


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


def test_masked_padded_batch_matches_each_utterance_alone(tiny_fused):
    """With lengths, padding frames are masked as in NeMo: every row's valid output frames equal
    that row run alone (the stride-2 prolog included), whatever the padding holds."""
    torch.manual_seed(0)
    utterances = [torch.randn(1, 64, frames) for frames in (101, 150, 256)]
    batch = torch.randn(3, 64, 256)  # noise in the padding: masking must hide it
    for row, utterance in enumerate(utterances):
        batch[row, :, : utterance.shape[-1]] = utterance[0]
    lengths = torch.tensor([u.shape[-1] for u in utterances])
    with torch.no_grad():
        padded, out_lengths = tiny_fused.masked_logits(batch, lengths)
        assert torch.equal(out_lengths, tiny_fused.output_lengths(lengths))
        for row, utterance in enumerate(utterances):
            alone = tiny_fused.logits(utterance)
            assert alone.shape[-1] == int(out_lengths[row])
            assert torch.allclose(padded[row, :, : alone.shape[-1]], alone[0], atol=1e-5)


def test_nemo_log_probs_is_what_nemo_forward_computes(tiny_model):
    features = torch.randn(1, 64, 157, generator=torch.Generator().manual_seed(2))  # odd: a partial last frame
    with torch.inference_mode():
        expected, length, _ = tiny_model.forward(processed_signal=features,
                                                 processed_signal_length=torch.tensor([157]))
        actual = nemo_log_probs(tiny_model, features)
    assert actual.shape[1] == int(length[0])
    assert torch.equal(actual, expected)


def test_nemo_ctc_switches_masking_off_in_its_copy_only(tiny_model):
    from nemo.collections.asr.parts.submodules.jasper import MaskedConv1d

    from nemo_ptq.models.fp32 import NemoCTC

    wrapped = NemoCTC(tiny_model)
    assert {m.use_mask for m in tiny_model.modules() if isinstance(m, MaskedConv1d)} == {True}
    assert {m.use_mask for m in wrapped.modules() if isinstance(m, MaskedConv1d)} == {False}
