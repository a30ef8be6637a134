"""Transcripts: one JSON-lines file per eval set, one row per utterance (id, reference, hypothesis)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nemo_ptq.errors import DataError


@dataclass(frozen=True)
class Transcript:
    id: str
    reference: str  # normalized reference text
    hypothesis: str  # normalized decoded text
    duration: float  # seconds of audio


def write_transcripts(folder: Path, transcripts: dict[str, list[Transcript]]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for set_name, rows in transcripts.items():
        with (folder / f"{set_name}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")


def read_hypotheses(folder: Path, expected: dict[str, list[Transcript]]) -> dict[str, dict[str, str]]:
    """FP32 hypotheses by set and id, for exactly the utterances in `expected` (else a DataError)."""
    folder = Path(folder)
    found: dict[str, dict[str, str]] = {}
    for set_name, rows in expected.items():
        path = folder / f"{set_name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} is missing: run the FP32 baseline first (dvc repro evaluate-fp32)")
        with path.open() as f:
            hypotheses = {item["id"]: item["hypothesis"] for item in map(json.loads, filter(str.strip, f))}
        missing = [row.id for row in rows if row.id not in hypotheses]
        if missing:
            raise DataError(
                f"{path} lacks {len(missing)} utterance(s) (e.g. {missing[0]}) of the current eval set: "
                "the FP32 transcripts are stale, rerun dvc repro evaluate-fp32"
            )
        found[set_name] = hypotheses
    return found
