"""Resumable synthesis of a planned list of utterances into 16 kHz WAV files plus a manifest."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nemo_ptq.errors import DataError

from embedded_recipe.audio import peak_normalize, to_16k, write_wav
from embedded_recipe.manifests import append_row
from embedded_recipe.text import as_tts_input


@dataclass(frozen=True)
class Utterance:
    """One clip to synthesize: a voice (or a blend of two voices), a speed, a text."""

    clip_id: str
    voices: tuple[str, ...]
    speed: float
    text: str


def plan_utterances(sentences: list[str], voices: list[str], *, seed: int, prefix: str,
                    speed_range: tuple[float, float], blend_probability: float) -> list[Utterance]:
    """A seeded voice/speed assignment for each sentence (voice blends add speakers that don't exist)."""
    rng = random.Random(seed)
    plan = []
    for index, text in enumerate(sentences):
        chosen = [rng.choice(voices)]
        # Kokoro styles blend well only within an accent (first letter of the name: a/b).
        same_accent = [v for v in voices if v[0] == chosen[0][0] and v != chosen[0]]
        if same_accent and rng.random() < blend_probability:
            chosen.append(rng.choice(same_accent))
        speed = round(rng.uniform(*speed_range), 3)
        plan.append(Utterance(f"{prefix}{index:05d}", tuple(chosen), speed, text))
    return plan


def finished_clip_ids(manifest_path: Path, plan: list[Utterance]) -> set[str]:
    """Clip ids already synthesized; a clip made from another plan (other params) is an error."""
    if not Path(manifest_path).is_file():
        return set()
    planned = {u.clip_id: u for u in plan}
    done = set()
    for line in Path(manifest_path).read_text().splitlines():
        row = json.loads(line)
        wanted = planned.get(row["clip_id"])
        if wanted and (row["text"], tuple(row["voices"]), row["speed"]) != (wanted.text, wanted.voices, wanted.speed):
            raise DataError(f"{manifest_path} holds clip {row['clip_id']} from other synthesis params; delete that "
                            "manifest (and its audio folder) or restore the params it was made with")
        done.add(row["clip_id"])
    return done


def synthesize_all(plan: list[Utterance], synthesize: Callable[[Utterance, str], tuple[np.ndarray, int]],
                   audio_dir: Path, manifest_path: Path, *, source: str, desc: str) -> int:
    """Synthesize every planned clip not yet in the manifest; returns how many were made now."""
    done = finished_clip_ids(manifest_path, plan)
    todo = [u for u in plan if u.clip_id not in done]
    for utterance in tqdm(todo, desc=desc, unit="clip", mininterval=10):
        samples = peak_normalize(to_16k(*synthesize(utterance, as_tts_input(utterance.text))))
        audio_path = Path(audio_dir) / f"{utterance.clip_id}.wav"
        duration = write_wav(audio_path, samples)
        append_row(manifest_path, {
            "audio_filepath": str(audio_path.resolve()), "duration": round(duration, 3), "text": utterance.text,
            "clip_id": utterance.clip_id, "source": source, "voices": list(utterance.voices),
            "speed": utterance.speed,
        })
    return len(todo)
