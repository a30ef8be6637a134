"""NeMo manifests (JSON lines with audio_filepath, duration, text)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from nemo_ptq.errors import DataError
from nemo_ptq.training.text import normalize_text


def read_manifest(path: Path, include_prefix: str = "") -> list[dict]:
    """Rows with absolute audio paths (relative ones resolve against the manifest's folder).

    `include_prefix` keeps only rows whose audio path, as written in the file, starts with it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not str(row["audio_filepath"]).startswith(include_prefix):
                continue
            audio = Path(row["audio_filepath"])
            row["audio_filepath"] = str(audio if audio.is_absolute() else (path.parent / audio).resolve())
            row["duration"] = float(row["duration"])
            row["text"] = str(row["text"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{number} is not a manifest row ({err})") from None
        rows.append(row)
    return rows


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
