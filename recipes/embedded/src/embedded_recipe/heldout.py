"""What the embedded model must never train on, and the check that enforces it.

Three held-out groups: real LibriSpeech test-other utterances; Kokoro voices (and the sentences they
read) kept for a synthetic evaluation; the espeak-ng voices and sentences that the quantization
pipeline evaluates and calibrates on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nemo_ptq.errors import DataError

from embedded_recipe.text import normalize_text


@dataclass(frozen=True)
class HeldOut:
    voices: frozenset[str] = frozenset()  # Kokoro and espeak-ng voice names, as manifests record them
    texts: frozenset[str] = frozenset()  # normalized sentences
    audio_files: frozenset[str] = frozenset()  # resolved paths

    def merged(self, other: HeldOut) -> HeldOut:
        return HeldOut(self.voices | other.voices, self.texts | other.texts, self.audio_files | other.audio_files)

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> HeldOut:
        """Everything an evaluation manifest uses: its audio, its texts and its voices."""
        rows = list(rows)
        return cls(voices=frozenset(v for row in rows for v in row.get("voices", [])),
                   texts=frozenset(normalize_text(row["text"]) for row in rows),
                   audio_files=frozenset(str(Path(row["audio_filepath"]).resolve()) for row in rows))


def leaks(rows: Iterable[dict], held_out: HeldOut) -> list[str]:
    """One line per training row that touches a held-out voice, text or audio file."""
    found = []
    for row in rows:
        reasons = []
        if set(row.get("voices", [])) & held_out.voices:
            reasons.append(f"voice {sorted(set(row['voices']) & held_out.voices)}")
        if normalize_text(row["text"]) in held_out.texts:
            reasons.append("text")
        if str(Path(row["audio_filepath"]).resolve()) in held_out.audio_files:
            reasons.append("audio file")
        if row.get("source_audio") and str(Path(row["source_audio"]).resolve()) in held_out.audio_files:
            reasons.append("source audio")
        if reasons:
            found.append(f"{row['audio_filepath']}: held-out {', '.join(reasons)}")
    return found


def without_held_out(rows: Iterable[dict], held_out: HeldOut) -> list[dict]:
    """Drop rows that would leak (e.g. a training sentence that a colleague later put in an eval list)."""
    return [row for row in rows if not leaks([row], held_out)]


def assert_no_leaks(rows: Iterable[dict], held_out: HeldOut) -> None:
    found = leaks(rows, held_out)
    if found:
        listed = "\n  ".join(found[:10])
        raise DataError(f"{len(found)} training rows touch held-out data:\n  {listed}")
