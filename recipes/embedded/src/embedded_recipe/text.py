"""Transcripts, sentence files and the choice of sentences to synthesize."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from nemo_ptq.data import text as shared_text
from nemo_ptq.models.architectures import QUARTZNET_VOCABULARY

# The recipe's model writes QuartzNet's characters: targets and WER use the pipeline's rule for them.
CHARACTERS = shared_text.model_characters(QUARTZNET_VOCABULARY, "char")


def normalize_text(text: str) -> str:
    """`nemo_ptq.data.text.normalize_text` for the recipe's vocabulary (a-z, apostrophe)."""
    return shared_text.normalize_text(text, CHARACTERS)


def read_librispeech_transcripts(path: Path) -> dict[str, str]:
    """`<utterance-id> <TRANSCRIPT>` lines -> {utterance id: normalized transcript}."""
    transcripts = {}
    for line in Path(path).read_text().splitlines():
        utt_id, _, text = line.partition(" ")
        if text.strip():
            transcripts[utt_id] = normalize_text(text)
    return transcripts


def read_sentence_file(path: Path) -> set[str]:
    """Normalized sentences of a one-per-line text file; empty if the file does not exist yet."""
    path = Path(path)
    if not path.is_file():
        return set()
    return {normalize_text(line) for line in path.read_text().splitlines() if line.strip()}


def sample_sentences(candidates: Iterable[str], count: int, *, seed: int, min_words: int,
                     max_words: int, exclude: set[str] = frozenset()) -> list[str]:
    """`count` distinct sentences of min_words..max_words words, none in `exclude`, seeded.

    Prefix-stable: asking for more sentences with the same seed extends the earlier list, so a
    recipe can raise its clip count and keep every clip already synthesized.
    """
    pool = sorted({s for s in candidates if min_words <= len(s.split()) <= max_words} - set(exclude))
    if count > len(pool):
        raise ValueError(f"asked for {count} sentences but only {len(pool)} fit the length limits")
    rng = random.Random(seed)
    chosen: list[str] = []
    taken: set[int] = set()
    while len(chosen) < count:
        index = rng.randrange(len(pool))
        if index not in taken:
            taken.add(index)
            chosen.append(pool[index])
    return chosen


def as_tts_input(sentence: str) -> str:
    """Sentence case and a full stop, so that the synthesizer reads words rather than acronyms."""
    return sentence[:1].upper() + sentence[1:] + "."
