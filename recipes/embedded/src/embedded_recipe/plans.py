"""Which sentences each synthetic voice reads: the held-out Kokoro set, Kokoro and espeak-ng training.

The plans depend only on the transcript file, the real manifests, the voices and the seeds, so a
resumed run regenerates exactly the same clip ids, voices and texts. Sentences that a colleague
later adds to the pipeline's eval/calibration lists are removed when the training manifest is built.
"""

from __future__ import annotations

from embedded_recipe.params import EspeakParams, HeldOutParams, KokoroParams
from embedded_recipe.synthesis import Utterance, plan_utterances
from embedded_recipe.text import sample_sentences


def heldout_plan(transcripts: list[str], params: KokoroParams, heldout: HeldOutParams,
                 exclude: set[str]) -> list[Utterance]:
    """Each held-out voice reads its own sentences, at normal speed and unblended."""
    low, high = params.sentence_words
    per_voice = heldout.kokoro_clips_per_voice
    sentences = sample_sentences(transcripts, per_voice * len(heldout.kokoro_voices), seed=params.seed + 1000,
                                 min_words=low, max_words=high, exclude=exclude)
    return [Utterance(f"heldout_{voice}_{i:03d}", (voice,), 1.0, sentences[v * per_voice + i])
            for v, voice in enumerate(heldout.kokoro_voices) for i in range(per_voice)]


def kokoro_training_plan(transcripts: list[str], params: KokoroParams, training_voices: list[str],
                         exclude: set[str]) -> list[Utterance]:
    low, high = params.sentence_words
    sentences = sample_sentences(transcripts, params.train_clips, seed=params.seed, min_words=low,
                                 max_words=high, exclude=exclude)
    return plan_utterances(sentences, training_voices, seed=params.seed, prefix="kokoro_",
                           speed_range=tuple(params.speed_range), blend_probability=params.blend_probability)


def espeak_training_plan(transcripts: list[str], params: EspeakParams, sentence_words: list[int],
                         exclude: set[str]) -> list[Utterance]:
    low, high = sentence_words
    sentences = sample_sentences(transcripts, params.train_clips, seed=params.seed + 2000, min_words=low,
                                 max_words=high, exclude=exclude)
    return plan_utterances(sentences, params.voices, seed=params.seed, prefix="espeak_",
                           speed_range=tuple(params.speed_range), blend_probability=0.0)
