"""A strict reader for NeMo manifests (one JSON object per line: audio_filepath, duration, text).

NeMo's own `read_manifest` reports bad lines only through its logger and raises a bare
RuntimeError without the line number, and checks neither keys nor audio files; this reader names
the file and line of every problem so the user can fix it. The `duration` field is only
type-checked: the prepare step measures the real duration from the audio. The training recipe
(recipes/embedded, `embedded_recipe.manifests`) reads its manifests with it too, keeping each row's
other keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_ptq.errors import DataError

REQUIRED_KEYS = ("audio_filepath", "duration", "text")


@dataclass(frozen=True)
class ManifestEntry:
    audio_path: Path  # relative paths in the manifest are resolved against the manifest's folder
    duration: float
    text: str
    line: int
    row: dict[str, Any] = field(default_factory=dict, compare=False)  # the line's JSON object as written


def read_manifest(path: Path, include_prefix: str = "") -> list[ManifestEntry]:
    """Every line of a manifest, checked; `include_prefix` keeps only the lines whose audio_filepath,
    as written, starts with it (a subset of a larger corpus manifest)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found: check the manifest path in params.yaml (data section)")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON may hold U+2028
    except UnicodeDecodeError:
        raise DataError(f"manifest {path} is not UTF-8 text: give a JSON-lines manifest") from None
    if not any(line.strip() for line in lines):
        raise DataError(f"manifest {path} is empty: add one JSON line per utterance "
                        f"with keys {', '.join(REQUIRED_KEYS)}")
    entries = [_parse_line(path, line_no, line, include_prefix) for line_no, line in enumerate(lines, start=1)
               if line.strip()]
    return [entry for entry in entries if entry is not None]


def _parse_line(path: Path, line_no: int, line: str, include_prefix: str) -> ManifestEntry | None:
    where = f"{path} line {line_no}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not valid JSON ({err.msg}): write one JSON object per line") from None
    if not isinstance(row, dict):
        raise DataError(f"{where} is not a JSON object: write one {{...}} object per line")
    missing = [key for key in REQUIRED_KEYS if key not in row]
    if missing:
        raise DataError(f"{where} lacks key(s) {', '.join(missing)}; "
                        f"each line needs {', '.join(REQUIRED_KEYS)}")
    audio, duration, text = row["audio_filepath"], row["duration"], row["text"]
    if not isinstance(audio, str) or not audio.strip():
        raise DataError(f"{where}: audio_filepath must be a non-empty string")
    if not audio.startswith(include_prefix):
        return None
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
        raise DataError(f"{where}: duration must be a number of seconds >= 0, got {duration!r}")
    if not isinstance(text, str):
        raise DataError(f"{where}: text must be a string, got {text!r}")
    audio_path = Path(audio)
    if not audio_path.is_absolute():
        audio_path = path.parent / audio_path
    if not audio_path.is_file():
        raise DataError(f"{where}: audio file {audio_path} not found (relative paths resolve against "
                        f"the manifest's folder {path.parent})")
    return ManifestEntry(audio_path=audio_path, duration=float(duration), text=text, line=line_no, row=row)
