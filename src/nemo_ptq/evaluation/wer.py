"""Corpus-level word and character error rates (jiwer's alignment, our own totals).

Rates are total edits over total reference words/characters across a set, not a mean of
per-utterance rates. An empty reference (possible when the references are FP32 hypotheses of
silence) simply contributes its hypothesis as insertions; a rate over zero reference units is
None rather than a division by zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer


@dataclass(frozen=True)
class ErrorCounts:
    edits: int  # substitutions + deletions + insertions
    reference_units: int  # words (WER) or characters (CER) in the references

    @property
    def rate(self) -> float | None:
        return self.edits / self.reference_units if self.reference_units else None


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    return _errors(jiwer.process_words, references, hypotheses)


def char_errors(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    return _errors(jiwer.process_characters, references, hypotheses)


def _errors(process, references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Corpus totals from a jiwer alignment (words or characters)."""
    _check_lengths(references, hypotheses)
    if not references:
        return ErrorCounts(0, 0)
    out = process(list(references), list(hypotheses))
    return ErrorCounts(
        out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits
    )


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    return word_errors(references, hypotheses).rate


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float | None:
    return char_errors(references, hypotheses).rate


def _check_lengths(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
