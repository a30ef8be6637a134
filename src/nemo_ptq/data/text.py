"""Text normalization, one rule for references (prepare), hypotheses (evaluate) and the recipe's
training targets, so WER compares like with like.

The rule follows from what a CTC model can write: only its vocabulary's characters (space, a-z and
apostrophe for QuartzNet and the embedded model; the characters of the word pieces for a BPE model
such as Citrinet or Conformer-CTC). So normalization takes those characters as input and:

- lower-cases (after NFKC), turns typographic apostrophes into "'", drops punctuation and quotation
  marks ("well-known" scores as two words, as LibriSpeech writes it);
- writes an accented letter the model lacks as its base letter ("café" -> "cafe"): that is what
  the model writes for it;
- drops any other character the model cannot write (digits for a char model, other scripts): a
  reference word the model can never produce would count as an error in every variant alike, and
  a training target with it could not be learned. `prepare` warns once about such characters
  (`foreign_characters`), so the user can write them out ("42" -> "forty two").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence

WORD_MARKERS = ("\u2581", "##")  # sentencepiece's "▁" word start, WordPiece's "##" continuation
# Typographic apostrophes and look-alikes all become the ASCII apostrophe of the model vocabulary.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})
_PUNCTUATION = re.compile(r"[^\w\s']|_")
# An apostrophe not between word characters is a quotation mark ('like this'), not part of a word.
_QUOTE = re.compile(r"(?<!\w)'|'(?!\w)")


def model_characters(vocabulary: Sequence[str], tokenizer: str) -> frozenset[str]:
    """The characters a CTC model can write, from its card's vocabulary and tokenizer (char | bpe).

    Spaces are not included (words are split on whitespace); for BPE, special tokens such as
    `<unk>` and the word markers are not characters the model writes.
    """
    if tokenizer == "char":
        return frozenset(token for token in vocabulary if len(token) == 1 and not token.isspace())
    characters: set[str] = set()
    for token in vocabulary:
        if token.startswith("<") and token.endswith(">"):
            continue
        for marker in WORD_MARKERS:
            token = token.replace(marker, "")
        characters.update(ch.lower() for ch in token if not ch.isspace())
    return frozenset(characters)


def _canonical(text: str) -> str:
    """NFKC, apostrophes, lower case, punctuation -> spaces: what the vocabulary is checked against."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    return _PUNCTUATION.sub(" ", text)


def _written(char: str, characters: Collection[str]) -> str:
    if char in characters or char.isspace():
        return char
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return base if base and all(c in characters for c in base) else " "


def normalize_text(text: str, characters: Collection[str]) -> str:
    """'Don’t STOP—now, "please", café 42!' -> "don't stop now please cafe" for a-z and "'"."""
    text = "".join(_written(char, characters) for char in _canonical(text))
    return " ".join(_QUOTE.sub(" ", text).split())


def foreign_characters(text: str, characters: Collection[str]) -> set[str]:
    """The characters of `text`, punctuation aside, that the model cannot write as they are."""
    return {char for char in _canonical(text) if not char.isspace() and char not in characters}


def vocabulary_warning(texts: Iterable[str], characters: Collection[str], *, shown: int = 20) -> str | None:
    """One line on the references that hold characters the model cannot write, or None."""
    utterances, found = 0, set()
    for text in texts:
        foreign = foreign_characters(text, characters)
        utterances += bool(foreign)
        found |= foreign
    if not found:
        return None
    listed = " ".join(sorted(found)[:shown]) + (" ..." if len(found) > shown else "")
    return (f"warning: {utterances} utterance{'s' * (utterances != 1)} with {len(found)} character"
            f"{'s' * (len(found) != 1)} not in the model's vocabulary: {listed} (accented letters are scored "
            "as their base letter, the rest are dropped from the references: write them out as words)")
