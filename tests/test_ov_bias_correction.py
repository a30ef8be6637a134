"""`bias_correction: fast | full | none` on ov variants: NNCF's own bias correction, chosen at
convert, so one calibration serves every value; each value changes the artifact and keeps it close
to FP32; bad values and values that correct nothing are refused with one error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nemo_ptq.backends.base import CONFIG_FILE
from nemo_ptq.errors import ConfigError
from test_backend_contract import QUARTZNET_CARD, TEMPLATES, agreement_with_fp32

OV = next(template for template in TEMPLATES if template.backend == "ov")


def test_one_calibration_serves_every_value_and_each_changes_the_artifact(tmp_path, tiny_fused):
    maker = OV()
    _, cal = maker.calibrated(tmp_path, tiny_fused, QUARTZNET_CARD, bias_correction="none")
    assert "bias_correction" not in json.loads((cal / CONFIG_FILE).read_text()), "a convert option"
    outputs = {}
    for value in ("fast", "full", "none"):
        backend = maker.make("quartznet", QUARTZNET_CARD, bias_correction=value)
        backend.quantize(tiny_fused, cal, tmp_path / value)
        assert json.loads((tmp_path / value / CONFIG_FILE).read_text())["bias_correction"] == value
        agreement, outputs[value] = agreement_with_fp32(backend, tmp_path / value, tiny_fused)
        assert agreement >= 0.8
    for first, second in (("fast", "none"), ("full", "none"), ("fast", "full")):
        assert not np.allclose(outputs[first], outputs[second], atol=1e-6), f"{first} and {second} gave one artifact"


@pytest.mark.parametrize("entry, message", [
    ({"bias_correction": "slow"}, "unknown bias_correction 'slow'; choose one of: fast, full, none"),
    ({"precision": "fp32", "bias_correction": "full"}, "bias_correction has no quantization to correct"),
    ({"precision": "fp32", "bias_correction": "none"}, "bias_correction has no quantization to correct"),
])
def test_bad_bias_correction_is_one_config_error(entry, message):
    with pytest.raises(ConfigError, match=message):
        OV().make("quartznet", QUARTZNET_CARD, **entry)
