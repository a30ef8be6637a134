"""Cross-layer equalization (`equalize: cross_layer`): the same function, balanced weight ranges,
applied by every backend's calibrate and quantize, refused where it cannot apply."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nemo_ptq.backends import get_backend
from nemo_ptq.backends.base import CONFIG_FILE
from nemo_ptq.errors import ConfigError, UnsupportedModelError
from nemo_ptq.models.equalize import cross_layer_equalized, equalizable_pairs
from test_backend_contract import CALIBRATION, QUARTZNET_CARD, TEMPLATES, _features, agreement_with_fp32


def _ranges(model, pair):
    first, second = (dict(model.named_modules())[path].conv for path in pair)
    out_range = first.weight.abs().amax(dim=(1, 2))
    in_range = second.weight.abs().amax(dim=(1, 2) if second.groups > 1 else (0, 2))
    return out_range, in_range


def test_pairs_are_the_separable_links_inside_each_body(tiny_fused):
    """In QuartzNet every link inside a body is depthwise -> pointwise or pointwise + ReLU ->
    depthwise; links across a residual add, and the 1x1 epilogue, are not rescaled."""
    links = [(f"blocks.{b}.body.{i}", f"blocks.{b}.body.{i + 1}")
             for b, block in enumerate(tiny_fused.blocks) for i in range(len(block.body) - 1)]
    assert equalizable_pairs(tiny_fused) == links and len(links) == 17


def test_the_function_is_kept_and_the_ranges_balanced(tiny_fused):
    before = {k: v.clone() for k, v in tiny_fused.state_dict().items()}
    equalized = cross_layer_equalized(tiny_fused)
    assert all(torch.equal(before[k], v) for k, v in tiny_fused.state_dict().items()), "input untouched"
    features = torch.from_numpy(_features(64, 2, 300, seed=3)[0])[None]
    with torch.inference_mode():
        reference, result = tiny_fused(features), equalized(features)
        lengths = torch.tensor([300])
        masked_ref, _ = tiny_fused.masked_logits(features, lengths)
        masked_eq, _ = equalized.masked_logits(features, lengths)
    assert torch.allclose(result, reference, atol=1e-4)
    assert torch.allclose(masked_eq, masked_ref, atol=1e-3)
    changed = 0
    for pair in equalizable_pairs(tiny_fused):
        out_before, in_before = _ranges(tiny_fused, pair)
        out_after, in_after = _ranges(equalized, pair)
        changed += int(not torch.allclose(out_after, out_before))
        # balanced: the geometric spread of r1/r2 shrinks (DFQ's fixed point is r1 == r2)
        assert (out_after / in_after).log().abs().max() <= (out_before / in_before).log().abs().max() + 1e-5
    assert changed, "random weights are not already equalized"


def test_a_model_without_the_rewrite_is_refused(tmp_path, citrinet):
    _, wrapped, card = citrinet
    backend = get_backend("v", {"backend": "ort", "calibration": CALIBRATION, "equalize": "cross_layer"}, card)
    with pytest.raises(UnsupportedModelError, match="equalize: cross_layer rescales the QuartzNet/Jasper rewrite"):
        backend.calibrate(wrapped, iter(_features(card["feature_dim"], 1, 160, seed=0)), tmp_path / "cal")
    assert not (tmp_path / "cal").exists(), "refused before anything is written"


@pytest.mark.parametrize("entry, message", [
    ({"backend": "ort", "equalize": "dfq"}, "unknown equalize 'dfq'; choose one of: none, cross_layer"),
    ({"backend": "ort", "precision": "fp32", "equalize": "cross_layer"}, "equalize has no quantization to help"),
    ({"backend": "ov", "precision": "fp32", "equalize": "cross_layer"}, "equalize has no quantization to help"),
])
def test_bad_equalize_options(entry, message):
    with pytest.raises(ConfigError, match=message):
        get_backend("v", entry, QUARTZNET_CARD)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.backend)
def test_every_backend_quantizes_the_equalized_model(tmp_path, tiny_fused, template):
    """The option is part of the calibration's identity, and the artifact follows the equalized
    model: its output stays close to FP32 (the function is the same)."""
    maker = template()
    backend, cal = maker.calibrated(tmp_path, tiny_fused, QUARTZNET_CARD, equalize="cross_layer")
    assert json.loads((cal / CONFIG_FILE).read_text())["equalize"] == "cross_layer"
    with pytest.raises(Exception, match="differs in: equalize"):
        maker.make("quartznet", QUARTZNET_CARD).quantize(tiny_fused, cal, tmp_path / "other")
    backend.quantize(tiny_fused, cal, tmp_path / "q")
    agreement, log_probs = agreement_with_fp32(backend, tmp_path / "q", tiny_fused)
    assert agreement >= 0.8
    with torch.inference_mode():
        reference = tiny_fused(torch.from_numpy(_features(64, 1, 320, seed=1)[0][None])).numpy()
    assert not np.allclose(log_probs, reference, atol=1e-6), "it really is quantized"
