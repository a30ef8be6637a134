"""ARM64 artifacts checked under qemu user-mode emulation (nemo_ptq.arm64): the comparison, the
error for a missing environment, and (slow; skipped unless scripts/arm64_env.sh has built the
environment) tiny artifacts run alike on x86 and on emulated aarch64."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_ptq.arm64 import CACHE_ENV, Emulator, compare, run_emulated
from nemo_ptq.backends import get_backend
from nemo_ptq.errors import BackendUnavailableError, DataError
from nemo_ptq.evaluation.decoding import CtcVocabulary
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY

VOCABULARY = CtcVocabulary(tuple(QUARTZNET_VOCABULARY), len(QUARTZNET_VOCABULARY), "char")
CARD = {"vocabulary": list(QUARTZNET_VOCABULARY), "blank_id": len(QUARTZNET_VOCABULARY), "tokenizer": "char",
        "sample_rate": 16000, "feature_dim": 64, "subsampling_factor": 2}
CALIBRATION = {"num_utterances": 3, "seed": 0}
ENTRIES = {
    "qnnpack": {"backend": "eager", "engine": "qnnpack",
                "calibration": {**CALIBRATION, "per_channel": False, "reduce_range": False}},
    "ort_int8_arm64": {"backend": "ort", "preset": "arm64", "calibration": CALIBRATION},
}

# qnnpack's x86 and ARM kernels agree up to float rounding (4.8e-7 measured); ORT's S8S8 kernels
# round differently on ARM (2.4e-3 measured on this tiny model; more on a trained one, whose
# ties are closer: README "ARM64 targets").
MAX_LOG_PROB_DIFFERENCE = {"qnnpack": 1e-4, "ort_int8_arm64": 0.05}


def _log_probs(ids: list[int], margin: float = 4.0) -> np.ndarray:
    """[1, frames, vocab+1] log-probs whose argmax is `ids`."""
    logits = np.zeros((1, len(ids), VOCABULARY.blank_id + 1), dtype=np.float32)
    logits[0, np.arange(len(ids)), ids] = margin
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_compare_counts_identical_transcripts_and_the_largest_difference():
    blank = VOCABULARY.blank_id
    x86 = [_log_probs([1, blank, 2]), _log_probs([3, 3, blank])]
    arm = [x86[0] + 0.25, _log_probs([3, blank, 4])]  # the same text; another last token
    result = compare(x86, arm, VOCABULARY.transcript, ["a", "b"])
    assert (result["utterances"], result["identical_transcripts"]) == (2, 1)
    assert result["identical_transcript_share"] == 0.5
    assert result["frame_argmax_agreement"] == pytest.approx(4 / 6)
    assert result["max_abs_log_prob_difference"] == pytest.approx(float(np.abs(x86[1] - arm[1]).max()))
    assert [row["id"] for row in result["differing_transcripts"]] == ["b"]


def test_compare_rejects_outputs_of_another_shape():
    with pytest.raises(DataError, match="utterance a: ARM log-probs have shape"):
        compare([_log_probs([1, 2])], [_log_probs([1])], VOCABULARY.transcript, ["a"])
    with pytest.raises(DataError, match="1 emulated outputs for 2 utterances"):
        compare([_log_probs([1])] * 2, [_log_probs([1])], VOCABULARY.transcript, ["a", "b"])


def test_missing_environment_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "absent"))
    with pytest.raises(BackendUnavailableError, match=r"absent/root/usr/bin/python3, .*/site/torch missing\): run bash scripts/arm64_env.sh"):
        Emulator.find()


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    try:
        return Emulator.find()
    except BackendUnavailableError as err:
        pytest.skip(f"the ARM64 emulation environment is not installed: {err}")


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(ENTRIES))
def test_artifact_runs_alike_on_x86_and_emulated_arm64(tmp_path, tiny_fused, emulator, variant):
    rng = np.random.default_rng(0)
    backend = get_backend(variant, ENTRIES[variant], CARD)
    calibration = [rng.standard_normal((64, 200)).astype(np.float32) for _ in range(3)]
    backend.calibrate(tiny_fused, iter(calibration), tmp_path / "cal")
    backend.quantize(tiny_fused, tmp_path / "cal", tmp_path / "q")
    features = [rng.standard_normal((64, frames)).astype(np.float32) for frames in (150, 300)]
    runner = backend.load(tmp_path / "q", threads=1)
    x86 = [runner(feats[None]) for feats in features]

    arm, system = run_emulated(emulator, backend.name, tmp_path / "q", features, tmp_path / "arm")
    assert system["isa_profile"] == "arm_dotprod" and system["cpu_identity"].startswith("aarch64")
    result = compare(x86, arm, VOCABULARY.transcript, ["short", "long"])
    assert result["identical_transcripts"] == 2 and result["frame_argmax_agreement"] >= 0.99
    assert result["max_abs_log_prob_difference"] < MAX_LOG_PROB_DIFFERENCE[variant]
