"""Turning the real and synthesized sources into train / validation manifests."""

from __future__ import annotations

import random
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from embedded_recipe.audio import read_16k, speed_perturb, write_wav


def perturbed_copies(rows: list[dict], factors: list[float], out_dir: Path) -> list[dict]:
    """A copy of every row at each speed factor; files already written are reused (resumable)."""
    copies = []
    for factor in factors:
        for row in tqdm(rows, desc=f"speed {factor}", unit="clip", mininterval=10):
            source = Path(row["audio_filepath"])
            target = Path(out_dir) / f"sp{factor:g}" / row.get("source", "real") / f"{source.stem}.wav"
            if target.is_file():
                duration = sf.info(target).duration
            else:
                duration = write_wav(target, speed_perturb(read_16k(source), factor))
            copies.append({**row, "audio_filepath": str(target), "duration": round(duration, 3),
                           "source_audio": str(source), "speed": factor})
    return copies


def recording_of(row: dict) -> str:
    """The original recording a row comes from (a speed-perturbed copy points at its source)."""
    return row.get("source_audio") or row["audio_filepath"]


def split_validation(rows: list[dict], per_source: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): `per_source` recordings of each source, with all their copies, go to validation.

    Splitting by recording keeps a perturbed copy of a validation clip out of training.
    """
    by_source: dict[str, list[str]] = {}
    for row in rows:
        if "source_audio" not in row:
            by_source.setdefault(row["source"], []).append(recording_of(row))
    rng = random.Random(seed)
    chosen = {rec for recs in by_source.values() for rec in rng.sample(sorted(recs), min(per_source, len(recs)))}
    train = [row for row in rows if recording_of(row) not in chosen]
    validation = [row for row in rows if recording_of(row) in chosen and "source_audio" not in row]
    return train, validation


def within_duration(rows: list[dict], max_duration_s: float, min_duration_s: float = 0.3) -> list[dict]:
    return [row for row in rows if min_duration_s <= row["duration"] <= max_duration_s]
