"""Listing a set's utterances from its source: a manifest, a built-in corpus or TTS."""

from __future__ import annotations

from pathlib import Path

from nemo_ptq.data.config import SetSpec
from nemo_ptq.data.manifest import read_manifest
from nemo_ptq.data.pocketsphinx import pocketsphinx_utterances
from nemo_ptq.data.tts import synthesize_set
from nemo_ptq.data.utterance import SourceUtterance, utterance_id


def collect(spec: SetSpec, scratch_dir: Path) -> list[SourceUtterance]:
    """The set's first `spec.limit` utterances; synthesized audio is written under scratch_dir."""
    if spec.tts is not None:
        return synthesize_set(spec.tts, scratch_dir, spec.limit)
    if spec.builtin is not None:  # config validation admits only "pocketsphinx"
        return pocketsphinx_utterances()[:spec.limit]
    entries = read_manifest(Path(spec.manifest))[:spec.limit]
    return [
        SourceUtterance(
            id=utterance_id(index, entry.audio_path.stem),
            text=entry.text,
            audio_path=entry.audio_path,
            origin=f"{spec.manifest} line {entry.line}",
            source=str(entry.audio_path),
        )
        for index, entry in enumerate(entries)
    ]
