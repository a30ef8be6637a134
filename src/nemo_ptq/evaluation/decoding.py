"""CTC greedy decoding from log-probs, with the vocabulary from the model card.

Runners of every backend return log-probs only, so decoding lives here, once, instead of in NeMo's
decoding classes (which need the model object). It reproduces NeMo's greedy CTC decoding: argmax
per frame, collapse repeats, drop the blank, then join characters, or join sentencepiece pieces
and turn the "▁" word marker into a space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from nemo_ptq.data.text import model_characters, normalize_text
from nemo_ptq.errors import DataError

WORD_MARKER = "\u2581"  # sentencepiece's "▁"
TOKENIZERS = ("char", "bpe")


@dataclass(frozen=True)
class CtcVocabulary:
    tokens: tuple[str, ...]  # in output index order
    blank_id: int
    tokenizer: str  # char | bpe

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise DataError(f"unknown tokenizer {self.tokenizer!r} in the model card; expected one of {TOKENIZERS}")
        if self.blank_id != len(self.tokens):
            raise DataError(
                f"model card has blank_id {self.blank_id} but {len(self.tokens)} tokens; NeMo CTC puts the "
                "blank last (blank_id = len(vocabulary)): rerun fetch-pretrained"
            )

    @cached_property
    def characters(self) -> frozenset[str]:
        """What the model can write: the input of text normalization (`nemo_ptq.data.text`)."""
        return model_characters(self.tokens, self.tokenizer)

    @classmethod
    def from_card(cls, card: dict) -> "CtcVocabulary":
        return cls(tuple(card["vocabulary"]), int(card["blank_id"]), str(card["tokenizer"]))

    def decode_ids(self, ids: np.ndarray) -> str:
        """Greedy CTC: collapse repeated ids, drop blanks, map ids to text."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size == 0:
            return ""
        keep = np.ones(ids.shape, dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]
        keep &= ids != self.blank_id
        pieces = [self.tokens[i] for i in ids[keep]]
        if self.tokenizer == "char":
            return "".join(pieces)
        return " ".join("".join(pieces).replace(WORD_MARKER, " ").split())

    def decode(self, log_probs: np.ndarray) -> str:
        """log-probs [1, frames, vocab+1] (or [frames, vocab+1]) -> text."""
        log_probs = np.asarray(log_probs)
        if log_probs.ndim == 3:
            if log_probs.shape[0] != 1:
                raise ValueError(f"decode expects batch size 1, got {log_probs.shape[0]}")
            log_probs = log_probs[0]
        if log_probs.shape[-1] != self.blank_id + 1:
            raise DataError(
                f"the model produced {log_probs.shape[-1]} classes but the card lists {self.blank_id} tokens "
                "plus blank: the artifact and data/model/card.json come from different models"
            )
        return self.decode_ids(log_probs.argmax(axis=-1))

    def transcript(self, log_probs: np.ndarray) -> str:
        """The decoded text normalized as the references are: what every transcript is scored on."""
        return normalize_text(self.decode(log_probs), self.characters)
