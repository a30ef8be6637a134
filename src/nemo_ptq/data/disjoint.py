"""Calibration must not see evaluation data, or quantization is tuned on the test set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nemo_ptq.errors import DataError


@dataclass
class SetFingerprint:
    """What identifies a set's content; each map goes from a key to the id that has it."""

    name: str
    kind: str
    source_audio: dict[str, str] = field(default_factory=dict)  # sha256 of the source file
    prepared_audio: dict[str, str] = field(default_factory=dict)  # sha256 of the prepared WAV
    sentences: dict[str, str] = field(default_factory=dict)  # normalized text

    def add(self, utterance_id: str, *, source_sha256: str = "", prepared_sha256: str = "",
            text_norm: str = "") -> None:
        for table, key in ((self.source_audio, source_sha256), (self.prepared_audio, prepared_sha256),
                           (self.sentences, text_norm)):
            if key:
                table.setdefault(key, utterance_id)


def check_disjoint(calibration: SetFingerprint, eval_sets: Sequence[SetFingerprint]) -> None:
    """No shared audio (source or prepared); for a synthetic calibration set, no shared sentence.

    Real recordings may legitimately repeat a short phrase, so only synthetic calibration text
    (which is under our control) must differ from every eval reference.
    """
    for eval_set in eval_sets:
        _require_disjoint("audio file", calibration, eval_set, "source_audio")
        _require_disjoint("prepared audio", calibration, eval_set, "prepared_audio")
        if calibration.kind == "synthetic":
            _require_disjoint("sentence", calibration, eval_set, "sentences")


def _require_disjoint(what: str, calibration: SetFingerprint, eval_set: SetFingerprint, table: str) -> None:
    calibration_keys, eval_keys = getattr(calibration, table), getattr(eval_set, table)
    shared = sorted(set(calibration_keys) & set(eval_keys), key=lambda k: calibration_keys[k])
    if shared:
        first = shared[0]
        raise DataError(
            f"calibration set '{calibration.name}' and eval set '{eval_set.name}' share {len(shared)} "
            f"{what}(s), e.g. calibration {calibration_keys[first]} = eval {eval_keys[first]}: "
            "calibration data must not overlap evaluation data; use different sources or sentences"
        )
