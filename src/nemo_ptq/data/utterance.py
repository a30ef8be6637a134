"""One utterance as found in a source, before its audio is decoded and prepared."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SourceUtterance:
    id: str  # unique within its set; names the prepared files
    text: str  # reference as given
    audio_path: Path
    origin: str  # where it was listed, for error messages ("x.jsonl line 3")
    source: str  # where the audio came from, recorded in the prepared manifest


def utterance_id(index: int, label: str) -> str:
    """'00003_sense-0870': the index keeps ids unique and ordered, the label keeps them readable."""
    slug = _UNSAFE.sub("-", label).strip("-.")[:60]
    return f"{index:05d}_{slug}" if slug else f"{index:05d}"
