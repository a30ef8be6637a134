import pytest

from nemo_ptq.data.disjoint import SetFingerprint, check_disjoint
from nemo_ptq.errors import DataError


def _fingerprint(name, kind, role="eval", **tables):
    fingerprint = SetFingerprint(name=name, kind=kind, role=role)
    for key, (utterance_id, value) in tables.items():
        fingerprint.add(utterance_id, **{key: value})
    return fingerprint


def test_disjoint_sets_pass():
    calibration = _fingerprint("cal", "synthetic", "calibration", source_sha256=("c1", "aaa"),
                               text_norm=("c1", "hello"))
    evals = [_fingerprint("ev", "real", source_sha256=("e1", "bbb"), text_norm=("e1", "goodbye"))]
    check_disjoint(calibration, evals)


@pytest.mark.parametrize(
    ("table", "what"),
    [("source_sha256", "audio file"), ("prepared_sha256", "prepared audio"), ("text_norm", "sentence")],
)
def test_overlap_is_an_error_naming_both_utterances(table, what):
    calibration = _fingerprint("cal", "synthetic", "calibration", **{table: ("c7", "same")})
    evals = [_fingerprint("first", "real"), _fingerprint("second", "synthetic", **{table: ("e3", "same")})]
    with pytest.raises(DataError) as info:
        check_disjoint(calibration, evals)
    message = str(info.value)
    assert f"'cal' and eval set 'second' share 1 {what}(s)" in message
    assert "calibration c7 = eval e3" in message


def test_real_calibration_may_repeat_an_eval_sentence():
    calibration = _fingerprint("cal", "real", "calibration", text_norm=("c1", "yes"))
    check_disjoint(calibration, [_fingerprint("ev", "real", text_norm=("e1", "yes"))])
