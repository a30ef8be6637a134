"""NeMo manifests (JSON lines with audio_filepath, duration, text)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from nemo_ptq.data import manifest as data_manifest

from embedded_recipe.text import normalize_text


def read_manifest(path: Path, include_prefix: str = "") -> list[dict]:
    """The rows of `nemo_ptq.data.manifest.read_manifest` as dicts with every key kept and an
    absolute audio path: the recipe adds keys (source, voices, speed) and writes rows back."""
    return [{**entry.row, "audio_filepath": str(entry.audio_path.resolve()), "duration": entry.duration}
            for entry in data_manifest.read_manifest(path, include_prefix)]


def write_manifest(path: Path, rows: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def append_row(path: Path, row: dict) -> None:
    """One row at a time, so that an interrupted synthesis keeps what it finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def normalized(rows: Iterable[dict]) -> list[dict]:
    """Rows whose text is in the model's vocabulary; rows left with no text are dropped."""
    out = []
    for row in rows:
        text = normalize_text(row["text"])
        if text:
            out.append({**row, "text": text})
    return out


def total_hours(rows: Iterable[dict]) -> float:
    return sum(row["duration"] for row in rows) / 3600.0
