"""Synthetic speech from a sentence list with espeak-ng or flite (both offline, deterministic).

Voices are assigned round-robin: sentence i is spoken by voice i mod len(voices). Every sentence
is spoken once, so a set's size and content stay the sentence file's, while the voices vary.
Both engines give byte-identical WAVs for the same text and voice, which keeps DVC's cache stable.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from nemo_ptq.data.config import TtsSource
from nemo_ptq.data.utterance import SourceUtterance, utterance_id
from nemo_ptq.errors import DataError

APT_PACKAGE = {"espeak-ng": "espeak-ng", "flite": "flite"}


def read_sentences(path: Path) -> list[tuple[int, str]]:
    """(line number, sentence) for each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sentence file {path} not found: check tts.sentences in params.yaml (data section)")
    sentences = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        sentence = " ".join(line.split())
        if not sentence:
            continue
        if not any(char.isalnum() for char in sentence):  # prepare then checks them against the vocabulary
            raise DataError(f"{path} line {line_no} has no words: remove it")
        sentences.append((line_no, sentence))
    if not sentences:
        raise DataError(f"sentence file {path} is empty: write one sentence per line")
    return sentences


def synthesize_set(tts: TtsSource, out_dir: Path, limit: int | None = None) -> list[SourceUtterance]:
    """Speak the first `limit` sentences (all when None) into WAVs under out_dir."""
    binary = _engine_binary(tts.engine)
    if tts.engine == "flite":
        _check_flite_voices(binary, tts.voices)
    sentences = read_sentences(Path(tts.sentences))[:limit]
    utterances = []
    for index, (line_no, sentence) in enumerate(sentences):
        voice = tts.voices[index % len(tts.voices)]
        wav = Path(out_dir) / f"{index:05d}.wav"
        origin = f"{tts.sentences} line {line_no} ({tts.engine} voice {voice})"
        _speak(binary, tts.engine, voice, sentence, wav, origin)
        utterances.append(SourceUtterance(
            id=utterance_id(index, voice),
            text=sentence,
            audio_path=wav,
            origin=origin,
            source=f"{tts.engine}:{voice}:{tts.sentences}:{line_no}",
        ))
    return utterances


def _engine_binary(engine: str) -> str:
    binary = shutil.which(engine)
    if binary is None:
        raise DataError(f"{engine} is not installed: install it with `apt-get install {APT_PACKAGE[engine]}`")
    return binary


def _check_flite_voices(binary: str, voices: list[str]) -> None:
    """flite falls back to its 8 kHz default voice for an unknown name instead of failing."""
    listing = subprocess.run([binary, "-lv"], capture_output=True, text=True, check=False).stdout
    available = listing.split(":", 1)[-1].split()
    unknown = [v for v in voices if v not in available]
    if unknown:
        raise DataError(f"unknown flite voice(s) {', '.join(unknown)}; available: {', '.join(available)}")


def _speak(binary: str, engine: str, voice: str, text: str, wav: Path, origin: str) -> None:
    if engine == "espeak-ng":
        command = [binary, "-v", voice, "-w", str(wav), "--", text]
    else:
        command = [binary, "-voice", voice, "-t", text, "-o", str(wav)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wav.is_file():
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        hint = "list voices with `espeak-ng --voices=en`" if engine == "espeak-ng" else "check the voice name"
        raise DataError(f"{origin}: {engine} failed ({reason}); {hint}")
