"""Calibration and dev data must not see evaluation data, or quantization is tuned on the test set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nemo_ptq.errors import DataError


@dataclass
class SetFingerprint:
    """What identifies a set's content; each map goes from a key to the id that has it."""

    name: str
    kind: str
    role: str = "eval"  # eval | calibration | dev, as in the prepared summary
    source_audio: dict[str, str] = field(default_factory=dict)  # sha256 of the source file
    prepared_audio: dict[str, str] = field(default_factory=dict)  # sha256 of the prepared WAV
    sentences: dict[str, str] = field(default_factory=dict)  # normalized text

    def add(self, utterance_id: str, *, source_sha256: str = "", prepared_sha256: str = "",
            text_norm: str = "") -> None:
        for table, key in ((self.source_audio, source_sha256), (self.prepared_audio, prepared_sha256),
                           (self.sentences, text_norm)):
            if key:
                table.setdefault(key, utterance_id)


def check_disjoint(held: SetFingerprint, others: Sequence[SetFingerprint]) -> None:
    """No shared audio (source or prepared); for a synthetic `held` set, no shared sentence.

    `held` is the calibration or the dev set, `others` the sets it must not overlap. Real
    recordings may legitimately repeat a short phrase, so only synthetic text (which is under our
    control) must differ from every other set's references.
    """
    for other in others:
        _require_disjoint("audio file", held, other, "source_audio")
        _require_disjoint("prepared audio", held, other, "prepared_audio")
        if held.kind == "synthetic":
            _require_disjoint("sentence", held, other, "sentences")


def _require_disjoint(what: str, held: SetFingerprint, other: SetFingerprint, table: str) -> None:
    held_keys, other_keys = getattr(held, table), getattr(other, table)
    shared = sorted(set(held_keys) & set(other_keys), key=lambda k: held_keys[k])
    if shared:
        first = shared[0]
        raise DataError(
            f"{held.role} set '{held.name}' and {other.role} set '{other.name}' share {len(shared)} "
            f"{what}(s), e.g. {held.role} {held_keys[first]} = {other.role} {other_keys[first]}: "
            f"{held.role} data must not overlap {other.role} data; use different sources or sentences"
        )
