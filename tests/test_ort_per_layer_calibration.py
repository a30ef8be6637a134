"""`calibration.per_layer` on ort variants: the activation inputs of the matching weight layers take
another calibration method's ranges, every other tensor the variant's `method`; patterns and
methods are checked before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_ptq.errors import ConfigError
from test_backend_contract import QUARTZNET_CARD, TEMPLATES, _features, agreement_with_fp32

ORT = next(template for template in TEMPLATES if template.backend == "ort")
# The tiny rewrite's 12 depthwise convs (block 7 is a dense 1x1 conv); each reads a tensor of its
# own: the features (block 0), a block's input (also read by its residual conv) or a ReLU's output.
DEPTHWISE = r"^blocks\.[0-6]\.body\.[02]\.conv$"
RESIDUALS = r"residuals\.0\.conv$"  # blocks 1-5: each reads its block's input, as body.0 does


def _ranges(cal_dir) -> tuple[str, dict[str, tuple[float, float]]]:
    from onnxruntime.quantization import load_tensors_data

    saved = load_tensors_data(cal_dir / "ranges.json")
    data = {name: tuple(float(np.asarray(v).item()) for v in td.range_value) for name, td in saved.items()}
    return saved.calibration_method, data


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory, tiny_fused):
    """The same utterances calibrated by minmax, percentile (99 %: the methods differ on every
    tensor), entropy, and minmax with the depthwise inputs from percentile, alone and beside a
    pattern for the residual convs (which read the same tensors as five of the depthwise convs)."""
    tmp = tmp_path_factory.mktemp("per_layer")
    made = {}
    for name, calibration in (("minmax", {"method": "minmax"}),
                              ("percentile", {"method": "percentile", "percentile": 99.0}),
                              ("entropy", {"method": "entropy"}),
                              ("mixed", {"method": "minmax", "percentile": 99.0,
                                         "per_layer": {DEPTHWISE: "percentile"}}),
                              ("residuals_first", {"method": "minmax", "percentile": 99.0,
                                                   "per_layer": {RESIDUALS: "entropy", DEPTHWISE: "percentile"}}),
                              ("depthwise_first", {"method": "minmax", "percentile": 99.0,
                                                   "per_layer": {DEPTHWISE: "percentile", RESIDUALS: "entropy"}})):
        backend, cal = ORT().calibrated(tmp, tiny_fused, QUARTZNET_CARD, name=name,
                                        calibration={"num_utterances": 3, "seed": 0, **calibration})
        made[name] = (backend, cal)
    return made


def test_matched_inputs_take_the_other_method_and_the_rest_the_default(calibrations):
    method, minmax = _ranges(calibrations["minmax"][1])
    _, percentile = _ranges(calibrations["percentile"][1])
    mixed_method, mixed = _ranges(calibrations["mixed"][1])
    assert mixed_method == method, "saved under the variant's method, which quantize passes to ORT"
    from_percentile = {name for name in mixed if mixed[name] != minmax[name]}
    assert all(mixed[name] == percentile[name] for name in from_percentile)
    assert len(from_percentile) == 12, "one tensor per depthwise conv"
    assert "audio_signal" in from_percentile, "the features, which blocks.0.body.0 reads"
    differing = {name for name in minmax if minmax[name] != percentile[name]}
    assert len(differing) > len(from_percentile), "the other tensors kept minmax although percentile differs"


def test_a_tensor_read_by_layers_of_two_patterns_takes_the_first_pattern(calibrations):
    _, percentile = _ranges(calibrations["percentile"][1])
    _, entropy = _ranges(calibrations["entropy"][1])
    _, residuals_first = _ranges(calibrations["residuals_first"][1])
    _, depthwise_first = _ranges(calibrations["depthwise_first"][1])
    shared = {name for name in residuals_first if residuals_first[name] != depthwise_first[name]}
    assert len(shared) == 5, "the inputs of blocks 1-5, read by body.0 and by the residual conv"
    assert all(residuals_first[name] == entropy[name] != percentile[name] == depthwise_first[name]
               for name in shared)


def test_the_mixed_calibration_quantizes_close_to_fp32(tmp_path, tiny_fused, calibrations):
    backend, cal = calibrations["mixed"]
    backend.quantize(tiny_fused, cal, tmp_path / "q")
    assert agreement_with_fp32(backend, tmp_path / "q", tiny_fused)[0] >= 0.8


def test_per_layer_is_part_of_the_calibration_identity(tmp_path, tiny_fused, calibrations):
    _, cal = calibrations["minmax"]
    other = ORT().make("quartznet", QUARTZNET_CARD, calibration={"num_utterances": 3, "seed": 0,
                                                                 "per_layer": {DEPTHWISE: "entropy"}})
    with pytest.raises(Exception, match="differs in: calibration"):
        other.quantize(tiny_fused, cal, tmp_path / "q")


def test_a_pattern_that_matches_no_layer_is_refused_before_any_output(tmp_path, tiny_fused):
    backend = ORT().make("quartznet", QUARTZNET_CARD, calibration={"num_utterances": 3, "seed": 0,
                                                                   "per_layer": {r"blocks\.99\.": "percentile"}})
    with pytest.raises(ConfigError, match=r"variants.v.calibration.per_layer: 'blocks\\\\.99\\\\.' matches no "
                                          r"weight layer of this model \(they are named like blocks.0.body.0.conv"):
        backend.calibrate(tiny_fused, iter(_features(64, 3, 160, seed=0)), tmp_path / "cal")
    assert not (tmp_path / "cal").exists()


def test_per_layer_needs_a_static_int8_calibration():
    with pytest.raises(ConfigError, match="calibration.per_layer has no calibration to split: precision dynamic"):
        ORT().make("quartznet", QUARTZNET_CARD, precision="dynamic", calibration={"per_layer": {DEPTHWISE: "entropy"}})


@pytest.mark.parametrize("per_layer, message", [
    ({"body": "kl"}, "per_layer: unknown method 'kl' for 'body'; choose one of: minmax, entropy, percentile"),
    ({"body[": "percentile"}, r"per_layer: 'body\[' is not a regular expression"),
    (["body"], "per_layer must map a regex on FP32 module paths to a method"),
])
def test_bad_per_layer_is_one_config_error(per_layer, message):
    with pytest.raises(ConfigError, match=message):
        ORT().make("quartznet", QUARTZNET_CARD, calibration={"per_layer": per_layer})
