"""Text normalization shared by references (prepare) and hypotheses (evaluate), so WER compares
like with like: lower case, no punctuation, apostrophes kept inside words, single spaces."""

from __future__ import annotations

import re
import unicodedata

# Typographic apostrophes and look-alikes all become the ASCII apostrophe of the model vocabulary.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'"})
_PUNCTUATION = re.compile(r"[^\w\s']|_")
# An apostrophe not between word characters is a quotation mark ('like this'), not part of a word.
_QUOTE = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize_text(text: str) -> str:
    """'Don’t STOP—now, "please"!' -> "don't stop now please". Digits are kept as they are."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = _PUNCTUATION.sub(" ", text)
    text = _QUOTE.sub(" ", text)
    return " ".join(text.split())
